"""The `gipip-jax` CLI end to end on the tiny real-image fixture, and its error paths."""

import json
import os

import pytest

from gipip_jax import cli

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")


@pytest.fixture(scope="module")
def folder(fixtures_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return [f"--set=data.name=folder:{fixtures_dir / 'tiny_folder'}", f"--set=data.cache_dir={cache}"]


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
            "--set=victim.name=resnet_tiny", "--set=attack.iterations=4", "--set=attack.chunk_size=2",
            f"--set=prior.checkpoint={ae}", "--set=metrics.lpips_net=None"]


def test_attack_end_to_end_and_rerun_skips_finished_targets(folder, trained_ae, tmp_path, capsys):
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path, *attack_overrides(folder, trained_ae)) == 0
    records = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert len(records) == 2
    for r in records:
        assert r["status"] == "ok" and r["batch_size"] == 2 and len(set(r["labels"])) == 2
        assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 and r["as_offset"] == 0.001
        assert set(r["terms"]) == {"matching", "tv", "anomaly"}
    assert os.path.getsize(tmp_path / "grid.png") > 0
    capsys.readouterr()
    assert run("attack", "gipip_cifar10.py:smoke", tmp_path, *attack_overrides(folder, trained_ae)) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    assert len(open(tmp_path / "results.jsonl").readlines()) == 2
    assert cli.main(["summarize", str(tmp_path / "results.jsonl")]) == 0
    assert "| gipip | resnet_tiny | 2 | 4 |" in capsys.readouterr().out


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
    assert cli.main(["attack", "--config", "nope.py:smoke", "--workdir", str(tmp_path)]) == 2
    assert "nope.py" in capsys.readouterr().err
