"""benchmarks/gpu_check.sh: the GPU check of issue 16 in one command.

`--toy` runs all three parts (step benchmark next to the PyTorch reference, a study through the CLI,
fp32 vs TF32 on the same attacks) at toy sizes on the CPU; the test checks its JSON. Slow: about
3 minutes of wall time on the loaded 2-core dev machine (compiles dominate), so it runs once per
session: with the PyTorch reference where torch is installed, without it (JAX rows only) where it is
not (CI installs only '.[test]'). Where torch is installed, the no-torch path of part 1 also runs
alone (GPU_CHECK_NO_TORCH=1 hides torch from the script's children; ~1 min). Without a GPU (or
without torch), the normal mode stops with one error line and exit status 2. The toy runs need the
real CIFAR-10 archive (BUILD.md) and are skipped when the script says it is not readable.
"""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

HAVE_TORCH = importlib.util.find_spec("torch") is not None
ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _env(**extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable, **extra)
    if "GPU_CHECK_NO_TORCH" not in extra:
        env.pop("GPU_CHECK_NO_TORCH", None)
    return env


def _toy(out: pathlib.Path, *args: str, **extra) -> dict:
    """Runs `gpu_check.sh --toy OUTDIR ARGS` (skipped without CIFAR-10); its gpu_check.json."""
    done = subprocess.run(["bash", str(SCRIPT), "--toy", str(out), *args], env=_env(**extra), capture_output=True,
                          text=True, timeout=1200)
    if done.returncode == 2 and "CIFAR-10 is not readable" in done.stderr:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "GPU check summary" in done.stdout
    result = json.loads((out / "gpu_check.json").read_text())
    result["stdout"] = done.stdout
    return result


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_no_gpu_is_one_error_line_and_exit_2(tmp_path):
    out = tmp_path / "gc"
    done = subprocess.run(["bash", str(SCRIPT), str(out)], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: "), done.stderr
    assert not out.exists()   # nothing started


def test_normal_mode_without_torch_is_one_error_line_and_exit_2(tmp_path):
    out = tmp_path / "gc"
    done = subprocess.run(["bash", str(SCRIPT), str(out)], env=_env(GPU_CHECK_NO_TORCH="1"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: PyTorch is missing"), done.stderr
    assert not out.exists()


def _check_step(result: dict, out: pathlib.Path, with_torch: bool) -> None:
    """Part 1: N = 1 and 4 batched attacks; with torch, JAX checked against PyTorch first and the
    ratios to PyTorch's step; without, the JAX rows only and the skip recorded."""
    meta = result["meta"]
    step = result["step"]
    assert step["status"] == "ok" and not step["errors"]
    (workload,) = step["workloads"]
    assert (workload["model"], workload["side"], workload["batch"]) == ("convnet_tiny", 16, 1)
    assert sorted(r["attacks"] for r in workload["rows"]) == [1, 4]
    for row in workload["rows"]:
        assert _positive(row["attack_steps_per_s"])
        assert _positive(row["fraction_of_peak"]) and row["fraction_of_peak"] < 1.5
        assert row["step_ms"] * row["attack_steps_per_s"] == pytest.approx(1000 * row["attacks"])
    step_json = json.loads((out / "step_1.json").read_text())
    if with_torch:
        assert meta["pytorch_reference"] == "ok" and meta["torch"]
        assert [c["native_rel_value"] < 1e-4 for c in step["checks"]] == [True]
        assert _positive(workload["torch_step_ms"])
        assert all(_positive(row["vs_torch_sequential"]) for row in workload["rows"])
    else:
        assert meta["torch"] is None and meta["pytorch_reference"] == "skipped: torch not installed"
        assert step["checks"] == [] and "torch_step_ms" not in workload
        assert all(row["vs_torch_sequential"] is None for row in workload["rows"])
        assert not [r for r in step_json["rows"] if r["mode"] == "torch"]
        assert step_json["meta"]["torch"] is None and step_json["meta"]["pytorch_reference"] == "skipped (--no-torch)"
        assert "PyTorch reference skipped: torch not installed" in result["stdout"]
        assert "PyTorch skipped |" in result["stdout"]


@pytest.mark.skipif(not HAVE_TORCH, reason="without torch, test_toy_run_writes_all_three_parts runs this path")
def test_toy_part1_without_torch(tmp_path):
    """GPU_CHECK_NO_TORCH=1 hides the installed torch: part 1 times the JAX rows only."""
    out = tmp_path / "gc"
    result = _toy(out, "--parts", "1", GPU_CHECK_NO_TORCH="1")
    assert "No module named 'torch'" in result["meta"]["torch_error"]
    _check_step(result, out, with_torch=False)
    assert result["study"]["status"] == "skipped" and result["precision"]["status"] == "skipped"


@pytest.mark.slow
def test_toy_run_writes_all_three_parts(tmp_path):
    """With the PyTorch reference where torch is installed, without it where it is not."""
    out = tmp_path / "gc"
    result = _toy(out)
    assert result["meta"]["toy"] is True and result["goals"]["meaningful"] is False

    # 1: the step benchmark (JAX checked against PyTorch, then timed, when torch is there).
    _check_step(result, out, with_torch=HAVE_TORCH)

    # 2: the study through the CLI: every attack finished, its wall time and rate.
    study = result["study"]
    assert study["status"] == "ok" and study["attacks"] == 4 and study["ok"] == 4 and study["iterations"] == 20
    assert study["attack_steps"] == 4 * 20
    assert _positive(study["wall_s"]) and _positive(study["wave_seconds"]) and study["wave_seconds"] < study["wall_s"]
    assert study["attack_steps_per_s"] == pytest.approx(80 / study["wave_seconds"])
    assert study["plan"]["strategy"] == "vmap_patches" and study["plan"]["attacks_per_device"] == 4
    progress = study["last_progress"]   # the study's own last progress line
    assert (progress["step"], progress["of"]) == (20, 20) and _positive(progress["attack_steps_per_s"])
    if HAVE_TORCH:   # part 1's PyTorch step x attacks x iterations vs the wave
        assert _positive(study["vs_pytorch_sequential"])
    else:
        assert study.get("vs_pytorch_sequential") is None and result["goals"]["study_vs_pytorch_sequential"] is None
    assert set(study["mean_psnr_by_as_weight"]) == {"0.0", "0.0001"}
    assert all(3 < v < 60 for v in study["mean_psnr_by_as_weight"].values())

    # 3: fp32 vs TF32 on the same attacks (part 2 reused as the TF32 arm: same iterations). The CPU
    # ignores the precision, so the PSNRs agree.
    precision = result["precision"]
    assert precision["status"] == "ok" and precision["compared"] == 4 and precision["iterations"] == 20
    assert precision["arms"]["tensorfloat32"]["reused"] is True
    assert precision["arms"]["highest"]["rc"] == 0 and _positive(precision["arms"]["highest"]["wall_s"])
    assert sorted(p["attack_id"] for p in precision["pairs"]) == [0, 1, 2, 3]
    for pair in precision["pairs"]:
        assert 3 < pair["psnr_fp32"] < 60 and 3 < pair["psnr_tf32"] < 60
        assert pair["delta"] == pytest.approx(pair["psnr_tf32"] - pair["psnr_fp32"])
    assert 0 <= precision["mean_abs_delta_psnr"] < 0.5
    assert precision["mean_psnr_fp32"] == pytest.approx(sum(p["psnr_fp32"] for p in precision["pairs"]) / 4)
    for name in ("part1_step_1.log", "part2_study.log", "part3_precision.log", "precision.json"):
        assert (out / name).exists(), name
