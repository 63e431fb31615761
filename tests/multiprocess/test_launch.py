"""One study as several local processes (gipip_jax.launch / distributed.py).

The study runs are slow (minutes on 2 cores) and start their own processes, so they run only when
GIPIP_JAX_MULTIPROCESS_TESTS=1 (set by .ci/run: `python -m pytest tests/multiprocess`); the unit
tests of the helpers run anywhere.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import gipip_jax
from gipip_jax import distributed, launch

REPO = pathlib.Path(gipip_jax.__file__).absolute().parent.parent
slow = pytest.mark.skipif(os.environ.get("GIPIP_JAX_MULTIPROCESS_TESTS") != "1",
                          reason="multi-process studies: set GIPIP_JAX_MULTIPROCESS_TESTS=1 (.ci/run does)")
STUDY = ["study", "--config", "experiments/configs/study_cifar10.py:smoke",
         "--set", "engine.strategy=vmap_patches", "--set", "engine.attacks_per_device=1",
         "--set", "attack.iterations=10", "--set", "engine.chunk_size=5", "--set", "engine.checkpoint_every=5",
         "--set", "metrics.lpips_net=None"]


def test_is_local():
    assert distributed.is_local("127.0.0.1:1234") and distributed.is_local("localhost:1")
    assert distributed.is_local("[::1]:80") and not distributed.is_local("10.0.0.2:1234")
    assert not distributed.is_local("") and not distributed.is_local(None)


def test_process_command_and_env():
    command = launch.process_command(["study", "--workdir", "W"], 1, 3, 4242)
    assert command[:3] == [sys.executable, "-m", "gipip_jax.cli"]
    assert " ".join(command[3:]) == ("study --workdir W --set engine.distributed=True --set "
                                     "engine.coordinator=127.0.0.1:4242 --set engine.num_processes=3 "
                                     "--set engine.process_id=1")
    env = launch.process_env(2, {"XLA_FLAGS": "--foo --xla_force_host_platform_device_count=8"})
    assert env["XLA_FLAGS"] == "--foo --xla_force_host_platform_device_count=2"


def test_launch_usage_errors():
    assert launch.main(["2", "study"]) == 2
    assert launch.main(["0", "--", "study"]) == 2


def _run(args, env=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def _records(path):
    with open(path) as f:
        return {r["attack_id"]: r for r in map(json.loads, f)}


@slow
def test_unreachable_coordinator_is_one_line(tmp_path):
    port = launch.free_port()
    result = _run(["-m", "gipip_jax.cli", *STUDY, "--workdir", str(tmp_path / "w"),
                   "--set", "engine.distributed=True", "--set", f"engine.coordinator=127.0.0.1:{port}",
                   "--set", "engine.num_processes=2", "--set", "engine.process_id=1"],
                  env={"GIPIP_JAX_INIT_TIMEOUT_S": "3", "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gipip-jax: error: process 1 cannot reach the coordinator")
    assert not (tmp_path / "w").exists()


@slow
def test_two_processes_match_one(tmp_path):
    """2 processes x 2 devices write the same records as 1 process x 4 devices (same plan)."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    one = _run(["-m", "gipip_jax.cli", *STUDY, "--workdir", str(single)],
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"})
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    two = _run(["-m", "gipip_jax.launch", "2", "--devices-per-process", "2", "--", *STUDY, "--workdir", str(multi)])
    assert two.returncode == 0, two.stdout[-4000:] + two.stderr[-2000:]
    assert "[1] process 1/2: 2 local of 4 cpu device(s)" in two.stdout
    a, b = _records(single / "results.jsonl"), _records(multi / "results.jsonl")
    with open(multi / "results.jsonl") as f:
        assert len(f.readlines()) == len(b) == 4   # each attack once, written by process 0 only
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for attack_id in a:
        x, y = a[attack_id], b[attack_id]
        assert (x["target_indices"], x["attack_id"], x["status"]) == (y["target_indices"], y["attack_id"], y["status"])
        # Same program on a different process/device layout: equal up to float32 rounding.
        np.testing.assert_allclose(y["psnr"], x["psnr"], rtol=1e-5)
        np.testing.assert_allclose(y["loss"], x["loss"], rtol=1e-4)
        assert x["terms"].keys() == y["terms"].keys()
        for term in x["terms"]:
            np.testing.assert_allclose(y["terms"][term], x["terms"][term], rtol=1e-4)
    assert not (multi / "state").exists() or not any((multi / "state").iterdir())
