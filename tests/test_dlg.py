"""DLG / iDLG: L-BFGS over the "dlg" parameterization, run by the engine, recovers a real image and label."""

import pathlib
import runpy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import attack, client, data, engine, labels, metrics, objectives, parameterizations, results, study
from gipip_jax.victims import make_victim

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs"


@pytest.fixture(scope="module")
def setup(fixtures_dir, tmp_path_factory):
    """Sigmoid LeNet on real 8x8 images (the tiny CIFAR-10 fixture, downsized), one target image."""
    images = data.load(f"folder:{fixtures_dir / 'tiny_folder'}", "test", image_size=8,
                       cache_dir=tmp_path_factory.mktemp("cache"))
    info = images.info
    victim = make_victim("lenet", info.num_classes, info.image_shape)
    variables = victim.init(jax.random.key(0))
    x01, y = images.take([3])
    target = client.victim_gradient(victim, variables, jnp.asarray(info.normalize(x01)), jnp.asarray(y))
    objective = objectives.make_objective(victim, variables, info, matching="l2")
    return info, objective, x01, y, target


def dlg_attack(info, objective, learn_labels):
    return attack.make_attack(objective, attack.make_lbfgs(), line_search=True,
                              parameterization=parameterizations.dlg(info.num_classes, learn_labels=learn_labels))


def run(info, objective, target, given, *, learn_labels, iterations, key):
    """One DLG attack through the engine on one device: its WaveResult."""
    eng = engine.Engine(lambda conv: objective, attack.make_lbfgs(), None, info.denormalize, shape=(1, *info.image_shape),
                        chunk_size=50, max_tries=0, line_search=True, mesh=engine.make_mesh(jax.devices()[:1]),
                        parameterization=parameterizations.dlg(info.num_classes, learn_labels=learn_labels))
    return eng.run(engine.attack_inputs(target, given, {}, jax.random.key(key)), iterations)


@pytest.mark.slow
def test_lbfgs_steps_trace_once_and_keep_the_best(setup):
    info, objective, x01, y, target = setup
    a = dlg_attack(info, objective, learn_labels=True)
    step = jax.jit(chex.assert_max_traces(a.step, n=1))
    state = a.init(jax.random.key(1), x01.shape)
    assert state.x["label_logits"].shape == (1, info.num_classes)
    losses = []
    for _ in range(20):   # the same compiled step every time: the carry's types stay fixed
        state = step(state, target, jnp.asarray(y))
        losses.append(float(state.loss))
    assert int(state.step) == 20 and np.all(np.isfinite(losses))
    assert losses[-1] < 0.1 * losses[0]
    np.testing.assert_allclose(state.best[1], min(losses))


@pytest.mark.slow
def test_dlg_recovers_real_image_and_label(setup):
    info, objective, x01, y, target = setup
    result = run(info, objective, target, np.zeros_like(y), learn_labels=True, iterations=400, key=2)
    np.testing.assert_array_equal(result.labels[0], y)
    assert float(metrics.psnr(result.images01[0], x01)[0]) > 30.0
    assert result.images01.min() >= 0.0 and result.images01.max() <= 1.0


@pytest.mark.slow
def test_idlg_mode_optimizes_the_image_only(setup):
    info, objective, x01, y, target = setup
    wrong = (y + 1) % info.num_classes
    right = run(info, objective, target, y, learn_labels=False, iterations=100, key=3)
    off = run(info, objective, target, wrong, learn_labels=False, iterations=100, key=3)
    np.testing.assert_array_equal(right.labels[0], y)
    np.testing.assert_array_equal(off.labels[0], wrong)
    assert right.loss[0] < off.loss[0]  # with the wrong label the gradient cannot be matched


@pytest.mark.slow
def test_attack_command_with_lbfgs_and_recovered_labels(fixtures_dir, tmp_path):
    config = runpy.run_path(str(CONFIGS / "dlg_cifar10.py"))["get_config"]("smoke")
    config.data.name = f"folder:{fixtures_dir / 'tiny_folder'}"
    config.data.cache_dir = str(tmp_path / "cache")
    config.attack.update(dict(iterations=20, labels="bias_count"))
    config.engine.chunk_size = 10
    config.metrics.lpips_net = None
    config.targets.update(dict(starts=[0], batch_size=2, unique_labels=False))
    (record,) = study.run(study.sequential(config), str(tmp_path / "run"))
    assert results.read_records(str(tmp_path / "run" / "results.jsonl"))[0]["label_accuracy"] == record["label_accuracy"]
    assert record["label_source"] == "bias_count" and len(record["recovered_labels"]) == 2
    assert record["label_accuracy"] == labels.accuracy(record["recovered_labels"], record["labels"])
    assert record["attack"] == "dlg:idlg" and record["status"] == "ok"
    config.attack.labels = "idlg"
    with pytest.raises(ValueError, match="single image"):
        study.run(study.sequential(config), str(tmp_path / "run2"))
