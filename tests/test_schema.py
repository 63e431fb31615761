"""The config schema: every shipped config passes, every declared field is checked against its
range or choices before any data is decoded (one error line, exit status 2, no work directory),
unknown fields pass through, and the same table is the CLI's --help-config."""

import glob
import os
import pathlib

import pytest

from gipip_jax import cli, configs, experiment, schema

CONFIGS = pathlib.Path(__file__).parent.parent / "experiments" / "configs"
# the config files of the commands the schema covers, and their command
COMMAND_OF = {"gipip": "attack", "ig": "attack", "ig_paper": "attack", "gradinversion": "attack", "dlg": "attack",
              "idlg": "attack", "study": "study", "study_gan": "study", "study_dip": "study", "ae": "train-ae",
              "gan": "train-gan", "victim": "train-victim", "utility": "utility"}


def shipped_configs():
    for path in sorted(glob.glob(str(CONFIGS / "*.py"))):
        for arg in ("", ":smoke", ":reference", ":cpu", ":3"):
            try:
                yield f"{os.path.basename(path)}{arg}", configs.load_config(path + arg)
            except configs.ConfigError:   # not a variant of this file
                continue


def test_every_shipped_config_and_variant_is_valid():
    checked = 0
    for name, config in shipped_configs():
        schema.validate(config)
        checked += 1
    assert checked >= 26


def leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.parametrize("name, command", sorted(COMMAND_OF.items()))
def test_every_field_of_the_shipped_configs_is_declared(name, command):
    config = configs.load_config(str(CONFIGS / f"{name}_cifar10.py"))
    table = schema.table()
    assert [p for p in leaves(config.to_dict()) if p not in table or command not in table[p].commands] == []


def run(command, config, workdir, *overrides):
    return cli.main([command, "--config", str(CONFIGS / config), "--workdir", str(workdir),
                     *(f"--set={o}" for o in overrides)])


@pytest.mark.parametrize("command, config, override, fragments", [
    ("attack", "gipip_cifar10.py:smoke", "attack.iterations=-5", ["attack.iterations = -5", ">= 0"]),
    ("attack", "gipip_cifar10.py:smoke", "attack.iterations=0", ["attack.iterations = 0", ">= 1"]),
    ("attack", "gipip_cifar10.py:smoke", "attack.restarts=0", ["attack.restarts = 0", "an integer >= 1"]),
    ("attack", "gipip_cifar10.py:smoke", "attack.max_tries=-1", ["attack.max_tries = -1", ">= 0"]),
    ("attack", "gipip_cifar10.py:smoke", "attack.learning_rate=0.0", ["attack.learning_rate = 0.0", "a number > 0"]),
    ("attack", "gipip_cifar10.py:smoke", "attack.labels='magic'", ["attack.labels = 'magic'", "'idlg'"]),
    ("attack", "gipip_cifar10.py:smoke", "attack.matching='l1'", ["attack.matching", "'cosine', 'l2'"]),
    ("attack", "gipip_cifar10.py:smoke", "attack.parameterization='vae'", ["attack.parameterization", "'gan'"]),
    ("attack", "gipip_cifar10.py:smoke", "targets.batch_size=0", ["targets.batch_size = 0", ">= 1"]),
    ("attack", "gipip_cifar10.py:smoke", "targets.starts=[0, -1]", ["targets.starts[1] = -1", ">= 0"]),
    ("attack", "gipip_cifar10.py:smoke", "grid.tv_weight=[1e-6, -1.0]", ["grid.tv_weight[1] = -1.0", ">= 0"]),
    ("attack", "gipip_cifar10.py:smoke", "grid.as_offset=[-0.1]", ["grid.as_offset[0] = -0.1", ">= 0"]),
    ("attack", "gipip_cifar10.py:smoke", "grid.noise_std=[0.0, -0.1]", ["noise_std", "-0.1", "[0, inf)"]),
    ("attack", "gipip_cifar10.py:smoke", "grid.prune_sparsity=[1.5]", ["prune_sparsity", "1.5", "[0, 1"]),
    ("attack", "gipip_cifar10.py:smoke", "grid.dp_noise_multiplier=[1.0]", ["dp_noise_multiplier", "dp_clip_norm > 0"]),
    ("attack", "gipip_cifar10.py:smoke", "threat.clients=0", ["threat.clients = 0", ">= 1"]),
    ("attack", "gipip_cifar10.py:smoke", "threat.local_steps=5", ["fedsgd", "local_steps must be 1"]),
    ("attack", "gipip_cifar10.py:smoke", "engine.chunk_size=0", ["engine.chunk_size = 0", ">= 1"]),
    ("attack", "gipip_cifar10.py:smoke", "engine.checkpoint_every=0", ["engine.checkpoint_every = 0", ">= 1"]),
    ("attack", "gipip_cifar10.py:smoke", "engine.strategy='pmap'", ["engine.strategy = 'pmap'", "'auto'"]),
    ("attack", "gipip_cifar10.py:smoke", "engine.plan='/nonexistent/plan.json'", ["engine.plan", "no such file"]),
    ("attack", "gipip_cifar10.py:smoke", "victim.checkpoint='/nonexistent/victim'", ["victim.checkpoint", "no such"]),
    ("attack", "gipip_cifar10.py:smoke", "victim.init='xavier'", ["victim.init = 'xavier'", "'torch'"]),
    ("attack", "gipip_cifar10.py:smoke", "metrics.lpips_net='squeeze'", ["metrics.lpips_net", "'vgg16', or None"]),
    ("attack", "gipip_cifar10.py:smoke", "data.image_size=0", ["data.image_size = 0", ">= 1, or None"]),
    ("study", "study_cifar10.py:smoke", "engine.attacks_per_device=-2", ["engine.attacks_per_device = -2", ">= 0"]),
    ("study", "study_gan_cifar10.py:smoke", "gan.latent_lr=-0.1", ["gan.latent_lr = -0.1", "> 0"]),
    ("study", "study_dip_cifar10.py:smoke", "dip.widths=[16, 0]", ["dip.widths[1] = 0", ">= 1"]),
    ("train-ae", "ae_cifar10.py:smoke", "aux.count=-3", ["aux.count = -3", ">= 0"]),
    ("train-ae", "ae_cifar10.py", "aux.fraction=1.5", ["aux.fraction = 1.5", "in (0, 1]"]),
    ("train-ae", "ae_cifar10.py", "aux.count=100", ["exactly one of aux.fraction and aux.count"]),
    ("train-ae", "ae_cifar10.py:smoke", "recipe='sgd'", ["recipe = 'sgd'", "'mse_adam'"]),
    ("train-ae", "ae_cifar10.py:smoke", "epochs=-1", ["epochs = -1", ">= 0"]),
    ("train-gan", "gan_cifar10.py:smoke", "b1=1.0", ["b1 = 1.0", "in [0, 1)"]),
    ("train-gan", "gan_cifar10.py:smoke", "batch_size=0", ["batch_size = 0", ">= 1"]),
    ("train-victim", "victim_cifar10.py:smoke", "learning_rate=-0.1", ["learning_rate = -0.1", "> 0"]),
    ("utility", "utility_cifar10.py:smoke", "settings=[{}, {'noise_std': -1.0}]", ["settings[1]", "noise_std", "-1"]),
    ("utility", "utility_cifar10.py:smoke", "delta=1.0", ["delta = 1.0", "in (0, 1)"]),
])
def test_a_bad_value_is_one_line_before_any_data_and_leaves_no_workdir(tmp_path, capsys, command, config, override,
                                                                        fragments):
    cache = tmp_path / "cache"
    assert run(command, config, tmp_path / "new" / "w", f"data.cache_dir='{cache}'", override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gipip-jax: error: config field "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    assert list(tmp_path.iterdir()) == []   # no work directory, and nothing decoded into the cache


def test_experiment_drivers_validate_their_configs():
    with pytest.raises(configs.ConfigError, match=r"attack.restarts = 0 .* an integer >= 1"):
        experiment.configured(experiment.STUDY_CONFIG, {"attack.restarts": 0})
    assert experiment.configured(experiment.STUDY_CONFIG, {"attack.restarts": 2}).attack.restarts == 2


def test_fields_the_schema_does_not_list_pass_through():
    config = configs.load_config(str(CONFIGS / "gipip_cifar10.py:smoke"))
    config.notes = "a field of another tool"
    config.attack.init = "random"
    config.extra = {"iterations": -5}   # not attack.iterations: not checked
    schema.validate(config)


def test_help_config_lists_each_commands_fields_with_their_ranges(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["study", "--help-config"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "engine.chunk_size" in out and "an integer >= 1: steps per compiled chunk" in out
    assert "grid.tv_weight[i]" in out and "aux.fraction" not in out
    with pytest.raises(SystemExit):
        cli.main(["train-ae", "--help-config"])
    out = capsys.readouterr().out
    assert "aux.fraction" in out and "a number in (0, 1], or None" in out and "attack.iterations" not in out
