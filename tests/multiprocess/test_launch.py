"""One study as several local processes (gipip_jax.launch / distributed.py).

The study runs are slow (minutes on 2 cores) and start their own processes, so they run only when
GIPIP_JAX_MULTIPROCESS_TESTS=1 (set by .ci/run: `python -m pytest tests/multiprocess`); the unit
tests of the helpers run anywhere.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gipip_jax
from gipip_jax import distributed, launch

REPO = pathlib.Path(gipip_jax.__file__).absolute().parent.parent
slow = pytest.mark.skipif(os.environ.get("GIPIP_JAX_MULTIPROCESS_TESTS") != "1",
                          reason="multi-process studies: set GIPIP_JAX_MULTIPROCESS_TESTS=1 (.ci/run does)")
# 4 targets x 2 settings = 8 attacks in 2 waves of 4 (4 devices x 1), a checkpoint every chunk of 5
# of the 20 steps: a kill can land mid-study, after the first wave's records.
STUDY = ["study", "--config", "experiments/configs/study_cifar10.py:smoke",
         "--set", "engine.strategy=vmap_patches", "--set", "engine.attacks_per_device=1",
         "--set", "attack.iterations=20", "--set", "engine.chunk_size=5", "--set", "engine.checkpoint_every=5",
         "--set", "metrics.lpips_net=None", "--set", "targets.starts=[0,1,2,3]"]
ATTACKS = list(range(8))


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


def test_describe_exit_and_peer_lost_status():
    assert launch.PEER_LOST_STATUS == distributed.PEER_LOST_STATUS
    assert launch.describe_exit(-9) == "was killed by signal 9 (SIGKILL)"
    assert launch.describe_exit(-6) == "was aborted by signal 6 (SIGABRT)"
    assert launch.describe_exit(75).startswith("stopped after losing contact with another process")
    assert launch.describe_exit(2) == "exited with status 2"
    lost = RuntimeError("UNKNOWN: Gloo AllGather failed: [pair.cc:547] Connection closed by peer [127.0.0.1]:1")
    assert distributed.is_peer_lost(lost) and not distributed.is_peer_lost(RuntimeError("shapes differ"))
    assert distributed.is_peer_lost(ValueError("UNKNOWN: Gloo AllGather failed"))
    distributed.exit_if_peer_lost(lost)   # not in a group: returns


def test_launch_fields_do_not_change_the_fingerprint():
    from gipip_jax import assembly
    from gipip_jax.cli import load_config
    single = load_config("experiments/configs/study_cifar10.py:smoke")
    process = load_config("experiments/configs/study_cifar10.py:smoke")
    process.engine.update(distributed=True, coordinator="127.0.0.1:4242", num_processes=4, process_id=3)
    canonical = distributed.without_launch_fields(process)
    assert process.engine.process_id == 3   # a copy
    assert assembly.config_fingerprint(canonical) == assembly.config_fingerprint(single)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The study's records from 1 process x 4 devices (shared by the slow tests)."""
    workdir = tmp_path_factory.mktemp("single") / "w"
    one = _run(["-m", "gipip_jax.cli", *STUDY, "--workdir", str(workdir)],
               env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"})
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    return _records(workdir / "results.jsonl")


def _assert_same_records(reference, workdir):
    """Each attack exactly once in `workdir`'s results.jsonl (whole lines), numbers as `reference`."""
    with open(workdir / "results.jsonl") as f:
        lines = f.readlines()
    assert all(line.endswith("\n") for line in lines)
    b = _records(workdir / "results.jsonl")
    assert len(lines) == len(b) == len(ATTACKS) and sorted(b) == sorted(reference) == ATTACKS
    for attack_id, x in reference.items():
        y = b[attack_id]
        assert (x["target_indices"], x["attack_id"], x["status"]) == (y["target_indices"], y["attack_id"], y["status"])
        assert x["fingerprint"] == y["fingerprint"]   # launch fields (port, process id) are not part of it
        # Same program on a different process/device layout: equal up to float32 rounding.
        np.testing.assert_allclose(y["psnr"], x["psnr"], rtol=1e-5)
        np.testing.assert_allclose(y["loss"], x["loss"], rtol=1e-4)
        assert x["terms"].keys() == y["terms"].keys()
        for term in x["terms"]:
            np.testing.assert_allclose(y["terms"][term], x["terms"][term], rtol=1e-4)
    assert not (workdir / "state").exists() or not any((workdir / "state").iterdir())


def _launch(count, devices, workdir, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "gipip_jax.launch", str(count), "--devices-per-process",
                             str(devices), "--", *STUDY, "--workdir", str(workdir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@slow
def test_two_processes_match_one(reference, tmp_path):
    """2 processes x 2 devices write the same records as 1 process x 4 devices (same plan)."""
    two = _run(["-m", "gipip_jax.launch", "2", "--devices-per-process", "2", "--", *STUDY, "--workdir", str(tmp_path)])
    assert two.returncode == 0, two.stdout[-4000:] + two.stderr[-2000:]
    assert "[1] process 1/2: 2 local of 4 cpu device(s)" in two.stdout
    assert "[1] 8/8 attacks done" in two.stdout   # process 1 reads what process 0 wrote
    _assert_same_records(reference, tmp_path)


@slow
def test_killed_process_stops_the_others_and_relaunch_resumes(reference, tmp_path):
    """4 processes x 1 device; process 2 is SIGKILLed in wave 2 (wave 1 recorded, a wave-2 checkpoint
    saved): the launcher stops within a minute naming the killed process, nothing is half-written,
    and the same command again finishes the study with every attack once, as 1 process x 4 devices."""
    log = tmp_path / "launch.log"
    workdir = tmp_path / "w"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "gipip_jax.launch", "4", "--devices-per-process", "1", "--",
                                  *STUDY, "--workdir", str(workdir)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        wave = workdir / "state" / "wave_00001"
        deadline = time.monotonic() + 900
        while not (wave.is_dir() and any(p.name.isdigit() for p in wave.iterdir())):
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.05)
        pids = dict(re.findall(r"launch: process (\d+) is pid (\d+)", log.read_text()))
        os.kill(int(pids["2"]), signal.SIGKILL)
        killed = time.monotonic()
        first.wait(timeout=120)
        stopped = time.monotonic() - killed
    text = log.read_text()
    assert stopped < 60, text[-4000:]
    assert first.returncode == 128 + signal.SIGKILL, text[-4000:]
    assert "launch: failed: process 2 was killed by signal 9 (SIGKILL) first" in text, text[-4000:]
    with open(workdir / "results.jsonl") as f:   # wave 1's records, whole lines
        assert sorted(json.loads(line)["attack_id"] for line in f) == [0, 1, 2, 3]

    again = _launch(4, 1, workdir)
    output, _ = again.communicate(timeout=900)
    assert again.returncode == 0, output[-4000:]
    assert "[0] 8 attacks (4 already done) in 2 wave(s)" in output, output[-4000:]
    assert "[0] wave 2/2: resumed after" in output, output[-4000:]
    _assert_same_records(reference, workdir)
