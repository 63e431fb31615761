"""Faults a study survives (issue 32), on the tiny real-image fixture: a second run on a held work
directory, two runs started at once, a stale lock, SIGINT / SIGTERM, a full disk (an injected
ENOSPC at each place a study writes, and a real one on a small tmpfs where the machine allows
one), duplicate records. Each ends with one line, and a rerun of the same command completes with
every attack recorded once and the numbers of an uninterrupted run."""

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import gipip_jax
from gipip_jax import cli, report, report_plots, summarize, workdir
from test_study import overrides, records, study

pytestmark = pytest.mark.slow   # the fault-injection suite: second tier (.ci/run runs it)
REPO = pathlib.Path(gipip_jax.__file__).absolute().parent.parent
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def reference(fixtures_dir, tmp_path_factory):
    """An uninterrupted run: 4 attacks in 2 waves of 2, a checkpoint every chunk of 5 of the 30 steps."""
    args = overrides(fixtures_dir, tmp_path_factory.mktemp("cache"))
    path = tmp_path_factory.mktemp("reference")
    assert cli.main(study(path, args)) == 0
    return path, args


def assert_same_records(path, reference):
    """Whole lines that all parse, every attack once, numbers bit for bit those of `reference`."""
    data = (path / "results.jsonl").read_bytes()
    assert data.endswith(b"\n")
    lines = [json.loads(line) for line in data.splitlines()]
    assert sorted(r["attack_id"] for r in lines) == [0, 1, 2, 3]
    for r, e in zip(records(path), records(reference)):
        assert (r["loss"], r["psnr"], r["ssim"], r["trace"]["steps"]) == (e["loss"], e["psnr"], e["ssim"], e["trace"]["steps"])
    assert not any((path / "state").iterdir()) and not (path / workdir.LOCK_FILE).exists()


def start(path, args, *, signal_after_checkpoint=None, **kwargs):
    """The study as a process. With `signal_after_checkpoint=(signum, wave)` it sends itself signum as
    soon as that wave (0-based) has saved its first checkpoint (a fixed moment, where one sent from
    here when the checkpoint shows up can come after a quick run has ended), with SIGINT handled as in
    a terminal: tests run as a background job (`.ci/run &`) inherit SIGINT ignored, which a study keeps."""
    code = "import sys; from gipip_jax import cli\n"
    if signal_after_checkpoint:
        signum, wave = signal_after_checkpoint
        code += ("import os, signal, orbax.checkpoint as ocp\n"
                 "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                 "save = ocp.CheckpointManager.save\n"
                 "def save_then_signal(self, *a, **k):\n"
                 "    out = save(self, *a, **k)\n"
                 f"    if os.path.basename(str(self.directory)) == 'wave_{wave:05d}': os.kill(os.getpid(), {int(signum)})\n"
                 "    return out\n"
                 "ocp.CheckpointManager.save = save_then_signal\n")
    code += f"sys.exit(cli.main({study(path, args)!r}))"
    # the subprocess inherits the test settings (CPU, fast compiles) from conftest through os.environ
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, **kwargs)


def hold(path):
    """A process that holds `path`'s lock until killed (as a running study would)."""
    code = ("import sys, time; from gipip_jax import workdir\n"
            "with workdir.held(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_a_held_workdir_is_refused_with_its_holder_and_a_killed_holder_blocks_nothing(reference, tmp_path, capsys):
    path, args = reference
    holder = hold(tmp_path)
    try:
        assert cli.main(study(tmp_path, args)) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"gipip-jax: error: {tmp_path} is in use by another run (pid {holder.pid} on host "
                               f"{socket.gethostname()}, since ")
        assert sorted(p.name for p in tmp_path.iterdir()) == [workdir.LOCK_FILE]   # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid}" in (tmp_path / workdir.LOCK_FILE).read_text()   # stale: its holder is dead
    assert cli.main(study(tmp_path, args)) == 0
    assert_same_records(tmp_path, path)


def test_a_file_system_without_locks_gets_a_warning_and_no_lock(tmp_path, monkeypatch, capsys):
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(workdir.fcntl, "flock", flock)
    with workdir.held(str(tmp_path)):
        assert not (tmp_path / workdir.LOCK_FILE).exists()
    assert "cannot lock files (No locks available)" in one_line(capsys.readouterr().err)


def test_two_runs_started_together_one_runs_the_other_stops(reference, tmp_path):
    path, args = reference
    runs = [start(tmp_path, args, stdout=subprocess.DEVNULL) for _ in range(2)]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 2], errors
    refused = [run.returncode for run in runs].index(2)
    assert f"in use by another run (pid {runs[1 - refused].pid} on host" in one_line(errors[refused])
    assert_same_records(tmp_path, path)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_ends_with_one_line_and_the_rerun_resumes(reference, tmp_path, signum, capsys):
    path, args = reference
    process = start(tmp_path, args, stdout=subprocess.DEVNULL, signal_after_checkpoint=(signum, 1))
    _, err = process.communicate(timeout=600)   # interrupted once the second wave has its first checkpoint
    wave = tmp_path / "state" / "wave_00001"
    assert process.returncode == 128 + signum
    assert re.fullmatch(r"gipip-jax: interrupted at wave 2, step \d+; 2/4 attacks recorded; "
                        r"rerun the same command to resume", one_line(err))
    assert any(p.name.isdigit() for p in wave.iterdir())   # the last checkpoint is kept
    assert cli.main(study(tmp_path, args)) == 0
    assert "wave 2/2: resumed after" in capsys.readouterr().out
    assert_same_records(tmp_path, path)


def test_a_signal_waits_for_the_end_of_an_uninterrupted_block():
    done, before = [], signal.getsignal(signal.SIGTERM)
    with pytest.raises(workdir.Interrupted) as stop:
        with workdir.interruptible(), workdir.uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            done.append(True)
    assert done and stop.value.status == 143
    assert signal.getsignal(signal.SIGTERM) is before   # handlers restored


def full_records(monkeypatch):
    """The second wave's records: half of them written, then ENOSPC."""
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("results.jsonl") and os.fstat(fd).st_size:
            real(fd, data[:len(data) // 2])
            raise ENOSPC
        return real(fd, data)
    monkeypatch.setattr(os, "write", write)


def full_checkpoint(monkeypatch):
    """The second wave's first checkpoint."""
    real = ocp.CheckpointManager.save

    def save(self, *args, **kwargs):
        if "wave_00001" in str(self.directory):
            raise ValueError("RESOURCE_EXHAUSTED: Error writing local file ...: Failed to write 2182 bytes to file 5: "
                             "No space left on device [os_error_code='28']")   # as TensorStore says it
        return real(self, *args, **kwargs)
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def full_reconstructions(monkeypatch):
    real = np.savez_compressed

    def savez(file, *args, **kwargs):
        if str(file).endswith("wave_00001.npz"):
            raise ENOSPC
        return real(file, *args, **kwargs)
    monkeypatch.setattr(np, "savez_compressed", savez)


def full_grid(monkeypatch):
    def save(path, rows):
        raise ENOSPC
    monkeypatch.setattr(report_plots, "save_labelled_grid", save)


@pytest.mark.parametrize("fill", [full_records, full_checkpoint, full_reconstructions, full_grid])
def test_a_full_disk_ends_with_one_line_and_a_rerun_completes(reference, tmp_path, monkeypatch, capsys, fill):
    path, args = reference
    with monkeypatch.context() as patch:
        fill(patch)
        assert cli.main(study(tmp_path, args)) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"gipip-jax: error: no space left on the device under {tmp_path} (")
    assert re.search(r"the rest of this run needs about [\d.]+ [KMG]B more: free space and rerun", line) \
        or fill is full_grid   # after the last wave the run needs only the grid
    data = (tmp_path / "results.jsonl").read_bytes()
    assert data.endswith(b"\n") and len([json.loads(x) for x in data.splitlines()]) == (4 if fill is full_grid else 2)
    assert cli.main(study(tmp_path, args)) == 0
    assert_same_records(tmp_path, path)
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_space_needed_counts_checkpoints_reconstructions_and_records(tmp_path):
    import jax
    state = {"x": jax.ShapeDtypeStruct((10, 100), np.float32), "k": jax.ShapeDtypeStruct((10, 2), np.uint32)}
    (tmp_path / "r.jsonl").write_text('{"a": 1}\n' * 4)   # records of 9 bytes
    assert workdir.space_needed(state, 5, 2, (1, 4, 4, 3), str(tmp_path / "r.jsonl")) == \
        2 * (4000 + 80) + 3 * 2 * (48 * 4 + 9)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_a_whole_file_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    workdir.write_text(str(path), "old")
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        workdir.write_text(str(path), "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
    monkeypatch.undo()
    workdir.write_text(str(path), "new")
    assert path.read_text() == "new"


def test_a_real_full_tmpfs_is_one_line_without_library_noise(reference, tmp_path):
    """A 24 KB tmpfs as W (in a private mount namespace): the first checkpoint fills it, orbax's
    TensorStore error and its logged tracebacks become one line; the same command on a bigger
    tmpfs then completes."""
    path, args = reference
    w, out = tmp_path / "w", tmp_path / "out"
    w.mkdir()
    out.mkdir()
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "gipip_jax.cli", *study(w, args)])
    script = (f"mount -t tmpfs -o size=24k tmpfs {w} || exit 99\n{command} 2> {out}/err1 >/dev/null; echo $? > {out}/rc1\n"
              f"mount -o remount,size=16m {w}\n{command} > /dev/null 2> {out}/err2; echo $? > {out}/rc2\n"
              f"cp -r {w}/. {out}/w")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    if done.returncode == 99 or not (out / "rc1").exists():
        pytest.skip(f"no private tmpfs here: {done.stderr.strip()[-300:]}")
    assert (out / "rc1").read_text().strip() == "2"
    line = one_line((out / "err1").read_text())
    assert line.startswith(f"gipip-jax: error: no space left on the device under {w} (")
    assert (out / "rc2").read_text().strip() == "0", (out / "err2").read_text()[-3000:]
    assert_same_records(out / "w", path)


def test_summarize_and_report_warn_once_about_duplicate_records(reference, tmp_path, capsys):
    path, _ = reference
    data = (path / "results.jsonl").read_text()
    (tmp_path / "results.jsonl").write_text(data + data)   # two runs that both wrote every attack
    assert summarize.main([str(tmp_path / "results.jsonl")]) == 0
    captured = capsys.readouterr()
    assert "4 duplicate record(s)" in one_line(captured.err)
    assert summarize.main([str(path / "results.jsonl")]) == 0
    assert capsys.readouterr() == (captured.out, "")   # the same table: one record per attack kept
    _, kept = report.load(str(tmp_path))
    assert "4 duplicate record(s)" in one_line(capsys.readouterr().err) and len(kept) == 4


slow = pytest.mark.skipif(os.environ.get("GIPIP_JAX_MULTIPROCESS_TESTS") != "1",
                          reason="multi-process studies: set GIPIP_JAX_MULTIPROCESS_TESTS=1 (.ci/run does)")


@slow
def test_in_two_processes_process_0_holds_the_lock(reference, tmp_path):
    """2 processes x 1 device, one wave of 4: refused while another run holds W, then the study runs."""
    path, args = reference
    command = [sys.executable, "-m", "gipip_jax.launch", "2", "--devices-per-process", "1", "--", *study(tmp_path, args)]
    holder = hold(tmp_path)
    try:
        refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert f"[0] gipip-jax: error: {tmp_path} is in use by another run (pid {holder.pid} on host" in refused.stdout
    ran = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["attack_id"] for line in lines) == [0, 1, 2, 3]
    assert not (tmp_path / workdir.LOCK_FILE).exists()


def test_sigkill_at_ten_random_moments_then_a_rerun_gives_every_attack_once_with_the_same_numbers(reference, tmp_path):
    """SIGKILL (no handler can run) at 10 moments drawn from seed 0, each in the run the previous kill
    left behind (start-up, compiles, waves, checkpoint writes and resumes included): after each kill
    every line of results.jsonl parses and no attack is there twice; the final rerun completes with
    every attack once and the numbers of an uninterrupted run."""
    path, args = reference
    rng = np.random.default_rng(0)
    for _ in range(10):
        process = start(tmp_path, args, stdout=subprocess.DEVNULL)
        try:
            process.wait(timeout=rng.uniform(2.0, 20.0))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        if (tmp_path / "results.jsonl").exists():
            data = (tmp_path / "results.jsonl").read_bytes()
            lines = data.splitlines()[:None if data.endswith(b"\n") else -1]   # a torn last line: cut by the next append
            ids = [json.loads(line)["attack_id"] for line in lines]
            assert len(ids) == len(set(ids))
    assert cli.main(study(tmp_path, args)) == 0
    assert_same_records(tmp_path, path)
