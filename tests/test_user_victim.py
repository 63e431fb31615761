"""The public victim protocol: register(), 'file.py:Class' / 'module:Class' names, default conv."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import attack, checkpoints, cli, convs, engine, labels, study, victims
from gipip_jax.client import victim_gradient
from gipip_jax.data import DatasetInfo
from gipip_jax.objectives import make_objective
from gipip_jax.victims import make_victim

ROOT = pathlib.Path(__file__).parent.parent
NAME = "tests/fixtures/my_victim.py:MyVictim"
INFO = DatasetInfo("toy", (8, 8, 3), 4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), tuple("abcd"))
STUDY_CONFIG = str(ROOT / "experiments" / "configs" / "study_cifar10.py")


@pytest.fixture
def in_repo(monkeypatch):
    """Relative file names resolve from the current directory: run from the repository root."""
    monkeypatch.chdir(ROOT)


def test_file_victim_builds_with_the_cpu_patch_conv_by_default(in_repo):
    victim = make_victim(NAME, INFO.num_classes, INFO.image_shape)
    assert victim.name == NAME and type(victim.module).__name__ == "MyVictim"
    assert victim.module.conv is convs.patch_grad_conv       # "auto" on the CPU backend
    native = make_victim(NAME, INFO.num_classes, INFO.image_shape, conv="native")
    assert native.module.conv is jax.lax.conv_general_dilated
    assert type(native.module) is type(victim.module)        # imported once, not per call
    variables = victim.init(jax.random.key(0))
    assert set(variables) == {"params", "batch_stats"}
    x = jax.random.normal(jax.random.key(1), (2, *INFO.image_shape))
    assert victim.apply(variables, x).shape == (2, INFO.num_classes)
    np.testing.assert_allclose(victim.apply(variables, x), native.apply(variables, x), rtol=1e-5, atol=1e-6)
    # An absolute path names the same class.
    absolute = make_victim(str(ROOT / "tests/fixtures/my_victim.py") + ":MyVictim", 4, INFO.image_shape)
    assert type(absolute.module) is type(victim.module)


def test_builtin_default_conv_is_the_patch_conv_on_cpu():
    assert jax.default_backend() == "cpu"
    assert convs.resolve_conv() == "patch_grad" and convs.resolve_conv("auto", "gpu") == "native"
    assert make_victim("convnet_tiny", 4, (8, 8, 3)).module.conv is convs.patch_grad_conv
    assert make_victim("lenet", 4, (8, 8, 3), conv="native").module.conv is jax.lax.conv_general_dilated


def test_module_without_conv_field_ignores_the_conv_choice(in_repo):
    victim = make_victim("tests/fixtures/my_victim.py:NoConvField", 3, (4, 4, 1), conv="patch_grad")
    assert victim.apply(victim.init(jax.random.key(0)), jnp.ones((1, 4, 4, 1))).shape == (1, 3)


def test_attack_on_a_file_victim_runs_and_reads_its_label(in_repo):
    victim = make_victim(NAME, INFO.num_classes, INFO.image_shape)
    variables = victim.init(jax.random.key(0))
    x01 = jax.random.uniform(jax.random.key(1), (1, *INFO.image_shape))
    target_labels = jnp.array([2])
    target = victim_gradient(victim, variables, INFO.normalize(x01), target_labels)
    assert labels.idlg(target, INFO.num_classes).tolist() == [2]  # the last dense layer's gradient is found
    terms = {"tv": {"weight": 1e-2}}
    objective = make_objective(victim, variables, INFO, terms=terms)
    optimizer = attack.make_optimizer(0.1, 6, signed=True)
    shape = (1, *INFO.image_shape)
    eng = engine.Engine(lambda conv: objective, optimizer, INFO.bounds(), INFO.denormalize, shape=shape,
                        chunk_size=3, max_tries=0, mesh=engine.make_mesh(jax.devices()[:1]))
    result = eng.run(engine.attack_inputs(target, target_labels, terms, jax.random.key(2)), 6)
    assert not result.failed[0] and result.steps[0] == 6
    assert np.isfinite(result.loss[0]) and result.images01[0].shape == shape


def test_register_makes_a_name_work_everywhere(tmp_path):
    from tests.fixtures.my_victim import MyVictim  # noqa: PLC0415  (importable as a package module too)

    victims.register("test_user_net", lambda k: MyVictim(num_classes=k))
    assert "test_user_net" in victims.registered()
    victim = make_victim("test_user_net", 3, (8, 8, 3))
    assert victim.module.conv is convs.patch_grad_conv
    variables = victim.init(jax.random.key(0))
    checkpoints.save_victim(tmp_path / "v", victim, variables, {"epochs": 0})
    loaded, loaded_variables, meta = checkpoints.load_victim(tmp_path / "v")
    assert loaded.name == "test_user_net" and meta["victim"]["name"] == "test_user_net"
    np.testing.assert_array_equal(loaded_variables["params"]["Dense_0"]["kernel"],
                                  variables["params"]["Dense_0"]["kernel"])
    # 'package.module:Class' names import the class; they round-trip through a checkpoint too.
    by_module = make_victim("tests.fixtures.my_victim:MyVictim", 3, (8, 8, 3))
    checkpoints.save_victim(tmp_path / "m", by_module, variables, {})
    assert checkpoints.load_victim(tmp_path / "m")[0].name == "tests.fixtures.my_victim:MyVictim"
    with pytest.raises(ValueError, match="built-in"):
        victims.register("lenet", lambda k: MyVictim(num_classes=k))
    with pytest.raises(ValueError, match="':'"):
        victims.register("a:b", lambda k: MyVictim(num_classes=k))
    victims.register("test_bad_builder", lambda k: 3)
    with pytest.raises(ValueError, match="not a Flax Linen module"):
        make_victim("test_bad_builder", 3, (8, 8, 3))


def test_file_victim_checkpoint_reimports_by_name(in_repo, tmp_path):
    victim = make_victim(NAME, 3, (8, 8, 3))
    variables = victim.init(jax.random.key(3))
    checkpoints.save_victim(tmp_path / "v", victim, variables, {})
    loaded, loaded_variables, _ = checkpoints.load_victim(tmp_path / "v")
    assert loaded.name == NAME and type(loaded.module) is type(victim.module)
    x = jnp.ones((1, 8, 8, 3))
    np.testing.assert_allclose(loaded.apply(loaded_variables, x), victim.apply(variables, x), rtol=1e-6)


@pytest.mark.parametrize("name, message", [
    ("vgg16", "unknown victim 'vgg16'"),
    ("tests/fixtures/missing.py:MyVictim", "no file"),
    ("tests/fixtures/my_victim.py:Nope", "no attribute 'Nope'"),
    ("tests/fixtures/my_victim.py:NOT_A_MODULE", "not a Flax Linen module"),
    ("tests/fixtures/my_victim.py:", "expected 'path/to/file.py:Class'"),
    ("no_such_package_xyz.mod:Net", "cannot import module"),
    ("json:JSONDecoder", "not a Flax Linen module"),
])
def test_bad_names_are_one_clear_error(in_repo, name, message):
    with pytest.raises(ValueError, match=message):
        make_victim(name, 3, (8, 8, 3))


def test_missing_classification_layer_is_a_clear_error(in_repo):
    from gipip_jax import defenses, features

    victim = make_victim("tests/fixtures/my_victim.py:NoDense", 3, (4, 4, 1))
    variables = victim.init(jax.random.key(0))
    x = jnp.ones((1, 4, 4, 1))
    grads = victim_gradient(victim, variables, x, jnp.array([1]))
    with pytest.raises(ValueError, match="exactly one dense layer"):
        labels.idlg(grads, 3)
    with pytest.raises(ValueError, match="dense"):
        features.classifier_input(victim, variables, x)
    with pytest.raises(ValueError, match="no dense layer for Soteria"):
        defenses.soteria_mask(victim, variables, x, 0.5)


def test_study_runs_a_file_victim(in_repo, fixtures_dir, tmp_path):
    config = cli.load_config(STUDY_CONFIG + ":smoke")
    for assignment in (f"data.name=folder:{fixtures_dir / 'tiny_folder'}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.split=test", "data.image_size=8", "targets.starts=[0]", f"victim.name={NAME}",
                       "grid.as_weight=[0.0]", "attack.labels=idlg", "attack.iterations=4",
                       "engine.strategy=unroll", "engine.attacks_per_device=1", "engine.chunk_size=2",
                       "engine.checkpoint_every=2", "metrics.lpips_net=None"):
        cli.apply_override(config, assignment)
    study.run(config, str(tmp_path / "study"))
    (record,) = [json.loads(line) for line in open(tmp_path / "study" / "results.jsonl")]
    assert np.isfinite(record["loss"])
