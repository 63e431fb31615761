"""A run's hold on its work directory W: it writes W alone, and whatever ends it (an interrupt, a
full disk) leaves W resumable and says so in one line.

* One writer: `held(W)` takes an OS lock (fcntl.flock) on W/.lock for the whole run and writes the
  holder's pid, host and start time into it. A second run on W gets `WorkdirBusy` (a ValueError:
  `gipip-jax` prints one error line naming the holder and exits with status 2). The kernel drops a
  flock when its process dies, so the file a killed run leaves behind blocks nothing (its text is
  only read to name a live holder). A clean release deletes the file. A file system that cannot lock
  (flock fails otherwise) gets a warning and no lock. In a multi-process study only process 0 holds
  the lock (it is the one that writes results.jsonl, reconstructions and the grid): a second group on
  the same W stops at its process 0 (`leave`: at once, skipping JAX's exit barrier), whose peers then
  lose their coordinator.
* Interrupts: inside `interruptible()` SIGINT and SIGTERM raise `Interrupted` (a KeyboardInterrupt,
  so `except Exception` does not swallow it), except inside `uninterrupted()` blocks (a checkpoint
  being saved, a wave's records being written), where the signal waits until the block is done.
  `Interrupted.status` is 128 + the signal number (130, 143).
* A full disk: `is_disk_full(error)` recognizes ENOSPC however a library reports it (an OSError, or
  TensorStore's RESOURCE_EXHAUSTED text inside orbax's errors); `DiskFull` is the one line that
  replaces it, with the space the rest of the run needs (`space_needed`).
* Log noise: inside `quiet_libraries()` the absl logger (orbax's: one traceback per background
  thread of a failed save), the asyncio logger and Python's unraisable-error hook print nothing,
  and after an error they stay quiet until the process ends, unless GIPIP_JAX_VERBOSE is set
  (not "" or "0").
* Whole files: `write_text(path, text)` writes a file whole or not at all (a temporary file beside
  it, then a rename; a failed write, a full disk say, leaves the old file and no temporary one).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time

import jax
import numpy as np

LOCK_FILE = ".lock"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
VERBOSE_ENV = "GIPIP_JAX_VERBOSE"
# a record's size when none is written yet to measure (records with a 20-point trace: 3.5-10 KB)
RECORD_BYTES = 16 << 10
_NO_SPACE = (os.strerror(errno.ENOSPC).lower(), f"os_error_code='{errno.ENOSPC}'")


class WorkdirBusy(ValueError):
    """Another live run holds the work directory."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM ended the run; `at` says where (set by the runner), `status` is the exit status."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum, self.status, self.at = signum, 128 + signum, ""

    def __str__(self) -> str:
        return f"interrupted{' at ' + self.at if self.at else ''}; rerun the same command to resume"


class DiskFull(OSError):
    """No space left under the work directory: one line with the free space and what the run needs."""

    def __init__(self, workdir: str, needed: int | None):
        free = shutil.disk_usage(workdir).free if os.path.isdir(workdir) else 0
        need = f"about {_size(needed)} more" if needed else "more"
        super().__init__(errno.ENOSPC, f"no space left on the device under {workdir} ({_size(free)} free); the "
                         f"rest of this run needs {need}: free space and rerun the same command to resume")

    def __str__(self) -> str:
        return self.strerror


@contextlib.contextmanager
def held(workdir: str, hold: bool = True):
    """Holds W/.lock for the block (nothing when `hold` is False: the processes other than 0)."""
    if not hold:
        yield
        return
    path = os.path.join(workdir, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise WorkdirBusy(f"{workdir} is in use by another run ({holder}); one run at a time writes a work "
                              "directory: wait for it to end, or stop it and rerun") from None
        except OSError as error:   # a file system without locks (e.g. Lustre mounted without flock)
            os.close(fd)
            os.unlink(path)
            print(f"warning: the file system of {workdir} cannot lock files ({error.strerror}); this run goes on "
                  "without the lock: make sure no other run writes this work directory", file=sys.stderr)
            yield
            return
        try:   # the lock is ours unless a releasing holder deleted the file between our open and flock
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.unlink(path)   # before the unlock: a run waiting on this file retries on a new one
        os.close(fd)


def _holder(fd: int) -> str:
    """The holder's line in the lock file; a holder that just took the lock writes it a moment later."""
    for _ in range(20):
        text = os.pread(fd, 500, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "a run that is starting"


class _Signals(threading.local):
    critical = 0          # depth of uninterrupted() blocks
    pending: int | None = None


_signals = _Signals()


def _raise(signum, frame) -> None:
    if _signals.critical:
        _signals.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible():
    """SIGINT / SIGTERM raise Interrupted in the block (main thread only; a signal ignored when the
    run started, e.g. under nohup, stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _signals.pending = None


@contextlib.contextmanager
def uninterrupted():
    """A block a signal does not cut: one that comes meanwhile raises Interrupted when it is done."""
    _signals.critical += 1
    try:
        yield
    finally:
        _signals.critical -= 1
    if not _signals.critical and _signals.pending is not None:
        signum, _signals.pending = _signals.pending, None
        raise Interrupted(signum)


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` whole or not at all (`path`.tmp, then a rename over `path`)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, is ENOSPC."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if any(marker in str(error).lower() for marker in _NO_SPACE):
            return True
        error = error.__cause__ or error.__context__
    return False


def space_needed(state_shape, attacks_left: int, wave_size: int, image_shape, results_path: str) -> int:
    """Bytes the rest of a study writes under W, roughly: while waves are left, a wave checkpoint
    twice (orbax writes the next one before it deletes the last), and per wave left its
    reconstructions (float32, an upper bound for the compressed file) and records (their mean size
    so far, else RECORD_BYTES)."""
    checkpoint = sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(state_shape))
    record = RECORD_BYTES
    if os.path.exists(results_path):
        with open(results_path, "rb") as f:
            lines = sum(1 for _ in f)
        record = os.path.getsize(results_path) // lines if lines else record
    waves = -(-attacks_left // wave_size)
    return (2 * checkpoint if waves else 0) + waves * wave_size * (math.prod(image_shape) * 4 + record)


def _size(nbytes: float) -> str:
    if nbytes < 1024:
        return f"{nbytes:.0f} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        nbytes /= 1024
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}"


@contextlib.contextmanager
def quiet_libraries():
    """In the block the absl logger, the asyncio logger (a failed save's TensorStore future, "exception
    was never retrieved" when it is collected) and Python's hook for errors nothing can catch (a
    TensorStore callback into orbax's closed event loop) print nothing, unless GIPIP_JAX_VERBOSE is
    set. A block left by an error keeps them quiet for the rest of the process: the leftovers of the
    failed save are collected later, some only at exit, after the error's one line."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        yield
        return
    loggers, hook = [logging.getLogger(name) for name in ("absl", "asyncio")], sys.unraisablehook
    for logger in loggers:
        logger.addFilter(_drop)   # once per logger however often blocks nest or repeat (Filterer ignores a twin)
    sys.unraisablehook = _ignore
    yield   # an error in the block propagates from here and leaves the libraries quiet
    for logger in loggers:
        logger.removeFilter(_drop)
    sys.unraisablehook = hook


def _drop(record) -> bool:
    return False


def _ignore(unraisable) -> None:
    pass


def leave(status: int) -> int:
    """`status`, for the caller to exit with; in a multi-process group, exits at once (os._exit) instead:
    a normal exit would wait in JAX's exit barrier for peers this process no longer meets."""
    if jax.distributed.is_initialized() and jax.process_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
