"""The `gipip-jax` CLI end to end on the tiny real-image fixture, and its error paths."""

import json
import os
import pathlib
import shutil

import pytest

from gipip_jax import checkpoints, cli, results

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")


def run(command, config, workdir, *overrides):
    return cli.main([command, "--config", os.path.join(CONFIGS, config), "--workdir", str(workdir), *overrides])


@pytest.fixture(scope="module")
def trained_ae(folder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ae")
    assert run("train-ae", "ae_cifar10.py:smoke", workdir, *folder, "--set=aux.count=8", "--set=heldout_count=4",
               "--set=batch_size=4") == 0
    meta = json.load(open(workdir / "ae" / "metadata.json"))
    assert meta["aux_count"] == 8 and meta["heldout_count"] == 4 and meta["as_offset"] == 0.001
    return workdir / "ae"


def attack_overrides(folder, ae):
    return [*folder, "--set=data.split=test", "--set=targets.starts=[0, 1]", "--set=targets.batch_size=2",
            "--set=victim.name=resnet_tiny", "--set=attack.iterations=4", "--set=engine.chunk_size=2",
            f"--set=prior.checkpoint={ae}", "--set=metrics.lpips_net=None"]


@pytest.mark.slow
def test_attack_end_to_end_and_rerun_skips_finished_targets(folder, trained_ae, tmp_path, capsys):
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path, *attack_overrides(folder, trained_ae)) == 0
    records = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert len(records) == 2
    for r in records:
        assert r["status"] == "ok" and r["batch_size"] == 2 and len(set(r["labels"])) == 2
        assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 and r["setting"]["as_offset"] == 0.001
        assert set(r["terms"]) == {"matching", "tv", "anomaly"}
    assert os.path.getsize(tmp_path / "grid.png") > 0
    capsys.readouterr()
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path, *attack_overrides(folder, trained_ae)) == 0
    out = capsys.readouterr().out
    assert "2/2 attacks done, 0 failed" in out and "choosing a plan" not in out   # nothing left: nothing compiled
    assert len(open(tmp_path / "results.jsonl").readlines()) == 2
    assert cli.main(["summarize", str(tmp_path / "results.jsonl")]) == 0
    assert "| gipip:gipip | resnet_tiny | 2 | 4 |" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    ("--set=data.name=imagenet_full", "imagenet_full"),
    ("--set=victim.name=vgg11", "vgg11"),
    ("--set=prior.checkpoint=/nonexistent/ae", "/nonexistent/ae"),
    ("--set=attack.nope=1", "no field 'nope'"),
    ("--set=attack.iterations", "key=value"),
])
def test_bad_input_exits_2_with_one_clear_line(folder, trained_ae, tmp_path, capsys, override, message):
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path, *attack_overrides(folder, trained_ae), override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gipip-jax: error:") and message in err[0]
    assert not os.path.exists(tmp_path / "results.jsonl")


def test_victim_checkpoint_for_other_images_is_rejected(folder, trained_ae, tmp_path, capsys):
    assert run("train-victim", "victim_cifar10.py:smoke", tmp_path, *folder, "--set=data.image_size=16",
               "--set=train_count=8", "--set=eval_count=4", "--set=batch_size=4") == 0
    overrides = [*attack_overrides(folder, trained_ae), f"--set=victim.checkpoint={tmp_path / 'victim'}"]
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path / "attack", *overrides) == 2
    assert "(16, 16, 3)" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["attack", "--config", "nope.py:smoke", "--workdir", str(tmp_path / "new")]) == 2
    assert_one_error_line(capsys, "nope.py")
    assert list(tmp_path.iterdir()) == []


def assert_one_error_line(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gipip-jax: error:"), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def test_workdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path / "file") == 2
    assert_one_error_line(capsys, str(tmp_path / "file"), "is a file, not a directory")
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path / "file" / "sub") == 2
    assert_one_error_line(capsys, "is a file, not a directory")
    assert (tmp_path / "file").read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["file"]


@pytest.mark.parametrize("override, message", [
    ("--set=data.data_dir=5", "'data.data_dir' takes a str, got int 5"),
    ("--set=attack.iterations=1.5", "'attack.iterations' takes an int, got float 1.5"),
    ("--set=targets.starts=3", "'targets.starts' takes a list"),
    ("--set=attack=3", "'attack' takes a group of fields"),
])
def test_override_of_the_wrong_type_names_the_key_and_type(tmp_path, capsys, override, message):
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path / "new", override) == 2
    assert_one_error_line(capsys, message)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_keeps_a_workdir_it_did_not_create(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path / "old", "--set=data.data_dir=5") == 2
    assert_one_error_line(capsys, "data.data_dir")
    assert os.listdir(tmp_path) == ["old"]


def test_corrupt_ae_checkpoint_is_one_line_and_leaves_no_new_workdir(folder, tmp_path, capsys):
    shipped = pathlib.Path(CONFIGS).parent / "checkpoints" / "ae_cifar10_aux5"
    ae = tmp_path / "ae"
    shutil.copytree(shipped, ae)
    for file in (ae / checkpoints.TREE_DIR / "ocdbt.process_0" / "d").iterdir():  # the arrays' chunks
        file.write_bytes(file.read_bytes()[:10])   # orbax: a 61-line TensorStore spec in its message
    workdir = tmp_path / "runs" / "new"   # two new levels, both removed again
    overrides = [*folder, "--set=data.split=test", "--set=victim.name=resnet_tiny", f"--set=prior.checkpoint={ae}",
                 "--set=metrics.lpips_net=None"]
    assert run("attack", "gipip_cifar10.py:smoke", workdir, *overrides) == 2
    line = assert_one_error_line(capsys, f"checkpoint at {ae} is corrupt or unreadable", "train-ae")
    assert "TensorStore" not in line and len(line) < 600
    assert sorted(os.listdir(tmp_path)) == ["ae"]


def test_summarize_of_a_corrupt_results_file(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 2}\n')
    assert cli.main(["summarize", str(path)]) == 2
    assert_one_error_line(capsys, f"{path}:2", "corrupt")
    assert issubclass(results.ResultsError, ValueError)


def test_config_loading_lives_in_configs():
    from gipip_jax import configs

    assert cli.load_config is configs.load_config and cli.apply_override is configs.apply_override
    config = configs.load_config(os.path.join(CONFIGS, "gipip_cifar10.py:smoke"))
    configs.apply_override(config, "data.data_dir='5'")   # a quoted number is the text
    configs.apply_override(config, "attack.learning_rate=1")  # an int for a float field is cast
    assert config.data.data_dir == "5" and config.attack.learning_rate == 1.0
    with pytest.raises(configs.ConfigError, match="'data.data_dir' takes a str"):
        configs.set_field(config, "data.data_dir", 7)
    with pytest.raises(configs.ConfigError, match="no field 'nope'"):
        configs.set_field(config, "nope.x", 1)
    with pytest.raises(configs.ConfigError, match="unknown config argument"):
        configs.load_config(os.path.join(CONFIGS, "gipip_cifar10.py:bogus"))
