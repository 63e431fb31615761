"""The study runner end to end on the tiny real-image fixture: records, grid, resume after a kill."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from gipip_jax import cli

CONFIG = str(pathlib.Path(__file__).parent.parent / "experiments" / "configs" / "study_cifar10.py")


def overrides(fixtures_dir, cache):
    return [f"--set=data.name=folder:{fixtures_dir / 'tiny_folder'}", f"--set=data.cache_dir={cache}",
            "--set=data.split=test", "--set=targets.starts=[0, 2]", "--set=victim.name=convnet_tiny",
            "--set=grid.as_weight=[0.0]", "--set=grid.noise_std=[0.0, 1e-2]", "--set=attack.labels=idlg",
            "--set=attack.iterations=30",
            "--set=engine.strategy=unroll", "--set=engine.attacks_per_device=2", "--set=engine.chunk_size=5",
            "--set=engine.checkpoint_every=5", "--set=metrics.lpips_net=None"]


def study(workdir, args):
    return ["study", "--config", CONFIG + ":smoke", "--workdir", str(workdir), *args]


def records(workdir):
    return sorted((json.loads(line) for line in open(workdir / "results.jsonl")), key=lambda r: r["attack_id"])


@pytest.fixture(scope="module")
def uninterrupted(fixtures_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    workdir = tmp_path_factory.mktemp("study")
    args = overrides(fixtures_dir, cache)
    assert cli.main(study(workdir, args)) == 0
    return workdir, args


def test_study_writes_one_record_per_attack_and_a_grid(uninterrupted):
    workdir, _ = uninterrupted
    rs = records(workdir)
    assert [r["attack_id"] for r in rs] == [0, 1, 2, 3]            # 2 targets x 2 noise levels, no padding records
    assert [r["setting_label"] for r in rs] == ["", "noise_std=0.01"] * 2
    assert all(r["label_source"] == "idlg" and r["label_accuracy"] == 1.0 for r in rs)
    assert all(r["status"] == "ok" and r["steps"] == 30 and 0 < r["psnr"] < 100 for r in rs)
    assert json.load(open(workdir / "plan.json"))["strategy"] == "unroll"
    assert os.path.getsize(workdir / "grid.png") > 0 and not any((workdir / "state").iterdir())
    # each attack's share of its wave's time, and a trace at chunk boundaries ending at the last step
    assert all(r["seconds"] == pytest.approx(r["wave_seconds"] / r["wave_size"]) for r in rs)
    for r in rs:
        t = r["trace"]
        assert t["steps"][-1] == 30 and t["steps"] == sorted(t["steps"]) and len(t["psnr"]) == len(t["steps"])
        assert set(t["terms"]) == set(t["grad_norms"]) >= {"matching", "tv"}
        assert t["terms"]["matching"][-1] == pytest.approx(r["terms"]["matching"], rel=1e-5)
        assert all(n > 0 for n in t["grad_norms"]["matching"])


def test_finished_study_compiles_nothing_and_reports_its_arms(uninterrupted, capsys):
    workdir, args = uninterrupted
    assert cli.main(study(workdir, args)) == 0
    out = capsys.readouterr().out
    assert "choosing a plan" not in out and "wave" not in out
    assert "4/4 attacks done, 0 failed" in out and "| study:ig |" in out


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_numbers(uninterrupted, tmp_path):
    reference, args = uninterrupted
    code = f"import sys; from gipip_jax import cli; sys.exit(cli.main({study(tmp_path, args)!r}))"
    # the subprocess inherits the test settings (CPU, fast compiles) from conftest through os.environ
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wave = tmp_path / "state" / "wave_00001"
    deadline = time.time() + 600
    while not (wave.is_dir() and any(p.name.isdigit() for p in wave.iterdir())) and time.time() < deadline:
        time.sleep(0.2)                    # killed once the second wave has its first checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(records(tmp_path)) == 2    # the first wave was recorded, the second was mid-way
    assert cli.main(study(tmp_path, args)) == 0
    resumed, expected = records(tmp_path), records(reference)
    assert [r["attack_id"] for r in resumed] == [0, 1, 2, 3]
    for r, e in zip(resumed, expected):
        assert (r["loss"], r["psnr"], r["ssim"]) == (e["loss"], e["psnr"], e["ssim"])   # bit for bit on CPU
        assert r["trace"]["steps"] == e["trace"]["steps"]   # the trace taken before the kill was kept
        assert r["trace"]["psnr"] == pytest.approx(e["trace"]["psnr"], rel=1e-5)


@pytest.mark.slow
def test_unreadable_wave_checkpoint_restarts_that_wave(uninterrupted, tmp_path, capsys):
    reference, args = uninterrupted
    with ocp.CheckpointManager(tmp_path / "state" / "wave_00000") as manager:   # a checkpoint of something else
        manager.save(3, args=ocp.args.StandardSave({"x": np.zeros(3)}))
    assert cli.main(study(tmp_path, args)) == 0
    assert "unreadable" in capsys.readouterr().out
    assert [(r["loss"], r["psnr"]) for r in records(tmp_path)] == [(r["loss"], r["psnr"]) for r in records(reference)]


def test_unknown_grid_field_is_one_clear_error(fixtures_dir, tmp_path, capsys):
    args = overrides(fixtures_dir, tmp_path / "cache") + ["--set=grid.lr=[0.1]"]
    assert cli.main(study(tmp_path, args)) == 2
    assert "grid" in capsys.readouterr().err


@pytest.mark.parametrize("batch", [1, 3])
def test_batched_metrics_match_the_per_attack_ones(batch):
    """_run_wave scores a wave with metrics.evaluate_batch; each attack gets what metrics.evaluate gives it."""
    from gipip_jax import metrics
    rng = np.random.default_rng(0)
    truth = rng.uniform(size=(4, batch, 16, 16, 3)).astype(np.float32)
    recs = np.clip(truth[:, ::-1] + rng.normal(scale=0.1, size=truth.shape), 0, 1).astype(np.float32)
    recs[2] = np.nan   # a failed attack: not matched, no scores
    needed = np.array([True, True, False, True])
    batched = metrics.evaluate_batch(recs, truth, lpips_net=None, needed=needed)
    assert batched[2] is None
    for i in (0, 1, 3):
        single = metrics.evaluate(recs[i], truth[i], lpips_net=None)
        assert batched[i]["order"] == single["order"] == list(range(batch))[::-1]
        assert batched[i].keys() == single.keys()
        for k in single.keys() - {"order"}:
            np.testing.assert_allclose(batched[i][k], single[k], rtol=1e-5, atol=1e-6)
