"""One study across several processes: `jax.distributed.initialize` as `gipip-jax study` needs it.

`initialize(config.engine)` is what `study.run` calls when `engine.distributed=True`:

* CPU collectives: sets `jax_cpu_collectives_implementation` to "gloo" before JAX's backends are
  created, so processes with (fake) CPU devices form one collective group with no other flag.
  (In jax 0.10 "gloo" is already the default; set explicitly so an environment that changed it,
  or an older/newer default, does not leave CPU processes without cross-process collectives.)
* SIGTERM: turns JAX's preemption service off (`jax_enable_preemption_service`), which would
  otherwise catch SIGTERM and keep the process running (the study has no preemption sync points),
  so `kill`, `timeout`, SLURM's scancel and gipip_jax.launch stop a process at once.
* Timeouts: a coordinator on this machine (127.0.0.1, localhost) gets short ones, so a missing
  peer, an unreachable coordinator or a process killed mid-study ends every other process with a
  message within about a minute instead of JAX's defaults (5 min to start, 100 s heartbeats,
  5 min shutdown). Elsewhere (SLURM, TPU pods) JAX's defaults hold. Either can be set with
  `engine.init_timeout_s` / `engine.heartbeat_timeout_s` where a config has those fields, else the
  environment variables GIPIP_JAX_INIT_TIMEOUT_S / GIPIP_JAX_HEARTBEAT_TIMEOUT_S.
* Errors: a failure to start (no coordinator, a peer that never came) raises `DistributedError`
  (a ValueError: `gipip-jax` prints one line `gipip-jax: error: ...` and exits with status 2).
* A peer lost mid-study (killed, crashed, its node gone): the survivors' next collective fails
  (Gloo: "Connection closed by peer"). Once the group is formed, `initialize` installs a
  `sys.excepthook` that turns such an uncaught error into one line
  `gipip-jax: error: process I of N lost contact with another process ...` and exits at once with
  status PEER_LOST_STATUS (75), skipping `jax.distributed.shutdown`'s exit barrier (which would
  wait for the dead peer's heartbeat timeout and then abort with a C++ stack trace). Any other
  uncaught error keeps its traceback and also exits at once (status 1), so the peers notice it at
  their next collective instead of waiting in it. A caller that catches errors itself calls
  `exit_if_peer_lost(error)` for the same (a peer-loss error has been seen reaching the CLI as one
  of its one-line input errors; without that call such a process waits in the exit barrier until
  the heartbeat timeout aborts it). A survivor that is not in a collective when the
  peer dies (compiling, writing) is ended by XLA's coordination service once the peer's heartbeat
  times out (SIGABRT, "Terminating process because the JAX distributed service detected fatal
  errors", with a C++ stack trace).

Launch several local processes with `python -m gipip_jax.launch N -- study ...` (launch.py).
"""

from __future__ import annotations

import copy
import os
import socket
import sys
import time

import jax

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# (initialization, heartbeat, shutdown) timeouts in seconds for a coordinator on this machine.
LOCAL_TIMEOUTS = (60, 20, 30)
# Exit status of a process that stopped because another process of its group was lost (EX_TEMPFAIL:
# relaunching all processes resumes the study). gipip_jax.launch reports such exits as consequences.
PEER_LOST_STATUS = 75
# Words in an XLA/Gloo error that mean a peer process is gone.
PEER_LOST_MARKERS = ("gloo", "connection closed", "connection reset", "broken pipe", "heartbeat",
                     "coordination service", "distributed service", "unavailable:", "task is set to error")


class DistributedError(ValueError):
    """The processes of a distributed study could not form (or lost) their group."""


def is_local(coordinator: str | None) -> bool:
    """Whether `coordinator` ("host:port") names this machine."""
    if not coordinator:
        return False
    host = coordinator.rsplit(":", 1)[0] if coordinator.count(":") == 1 or coordinator.startswith("[") else coordinator
    return host in LOCAL_HOSTS


def _timeouts(engine_config) -> dict:
    coordinator = engine_config.get("coordinator") or None
    init, heartbeat, shutdown = LOCAL_TIMEOUTS if is_local(coordinator) else (300, 100, 300)
    init = int(engine_config.get("init_timeout_s", 0) or os.environ.get("GIPIP_JAX_INIT_TIMEOUT_S") or init)
    heartbeat = int(engine_config.get("heartbeat_timeout_s", 0) or os.environ.get("GIPIP_JAX_HEARTBEAT_TIMEOUT_S")
                    or heartbeat)
    return dict(initialization_timeout=init, heartbeat_timeout_seconds=heartbeat, shutdown_timeout_seconds=shutdown)


def _wait_for_coordinator(coordinator: str, timeout: float, process_id) -> None:
    """Polls a TCP connection to `coordinator` until it accepts or `timeout` s pass. XLA's client
    aborts the whole process (no Python exception) when it cannot register; this turns the common
    case, a coordinator that is not (yet) there, into a DistributedError."""
    host, _, port = coordinator.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except (OSError, ValueError) as error:
            if isinstance(error, ValueError) or time.monotonic() >= deadline:
                raise DistributedError(
                    f"process {process_id} cannot reach the coordinator {coordinator} "
                    f"(engine.coordinator) within {timeout:.0f} s: {error or type(error).__name__}; "
                    "is process 0 running, with the same address?") from error
        time.sleep(0.5)


def initialize(engine_config) -> None:
    """`jax.distributed.initialize` from `engine_config` (coordinator, num_processes, process_id;
    any left unset — "", 0, -1 — are auto-detected: SLURM, Open MPI, TPU pods, ...)."""
    if jax.distributed.is_initialized():
        return
    coordinator = engine_config.get("coordinator") or None
    num_processes = engine_config.get("num_processes") or None
    process_id = engine_config.get("process_id", -1)
    process_id = None if process_id is None or process_id < 0 else int(process_id)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's preemption service catches SIGTERM (and then only flags a sync point the study never
    # asks about), so `kill`, `timeout`, scancel's first signal and the launcher's stop were ignored.
    jax.config.update("jax_enable_preemption_service", False)
    timeouts = _timeouts(engine_config)
    where = f"coordinator {coordinator}" if coordinator else "the auto-detected coordinator"
    if coordinator and process_id != 0:
        _wait_for_coordinator(coordinator, timeouts["initialization_timeout"], process_id)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, **timeouts)
        # Start the backend now: every process registers its devices with the coordinator, so a
        # missing peer is reported here, not by the first collective deep inside the study.
        jax.devices()
    except (RuntimeError, ValueError) as error:   # JaxRuntimeError is a RuntimeError
        text = " ".join(str(error).split())
        if len(text) > 300:
            text = text[:300] + "..."
        raise DistributedError(
            f"process {process_id if process_id is not None else '?'} of "
            f"{num_processes or '?'} could not join {where} within {timeouts['initialization_timeout']} s "
            f"(is every process started, with the same coordinator address and engine.num_processes?): {text}"
        ) from error
    if jax.process_count() > 1 and sys.excepthook is not _exit_on_uncaught:
        global _previous_excepthook
        _previous_excepthook = sys.excepthook
        sys.excepthook = _exit_on_uncaught


def is_peer_lost(error: BaseException) -> bool:
    """Whether `error` (raised by a collective; usually a JaxRuntimeError, but seen reaching the CLI
    as one of its input-error types too) means another process of the group is gone."""
    text = str(error).lower()
    return isinstance(error, Exception) and any(marker in text for marker in PEER_LOST_MARKERS)


def exit_if_peer_lost(error: BaseException) -> None:
    """For a caller that catches errors itself (the CLI's one-line errors): if this process is in a
    group and `error` means a peer is gone, print the one line and exit at once (PEER_LOST_STATUS),
    as the excepthook does; else return. Exiting normally instead would wait in
    `jax.distributed.shutdown`'s barrier until the heartbeat timeout aborts the process."""
    if jax.distributed.is_initialized() and jax.process_count() > 1 and is_peer_lost(error):
        print(peer_lost_line(error), file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(PEER_LOST_STATUS)


def peer_lost_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if len(text) > 200:
        text = text[:200] + "..."
    count = jax.process_count()
    return (f"gipip-jax: error: process {jax.process_index()} of {count} lost contact with another process "
            f"of the study ({text}); it stops. Another process died or was killed (see its output); "
            f"rerun all {count} processes with the same command to resume from results.jsonl and the "
            "last wave checkpoint")


_previous_excepthook = sys.excepthook


def _exit_on_uncaught(exc_type, error, traceback) -> None:
    """sys.excepthook of a process in a group: one line for a lost peer, else the traceback; then
    exits at once (os._exit), skipping the exit barrier that would wait for a dead peer."""
    status = 1
    try:
        if is_peer_lost(error):
            print(peer_lost_line(error), file=sys.stderr)
            status = PEER_LOST_STATUS
        else:
            _previous_excepthook(exc_type, error, traceback)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


# engine.* fields that say how this run was launched, not what it computes, with their
# single-process values.
LAUNCH_FIELDS = {"distributed": False, "coordinator": "", "num_processes": 0, "process_id": -1}


def without_launch_fields(config):
    """A copy of `config` with engine.distributed/coordinator/num_processes/process_id at their
    single-process values: every process of a group, every relaunch (a new port) and a 1-process
    run of the same study get the same config fingerprint, so results.jsonl is shared and resumed."""
    config = copy.deepcopy(config)
    for field, value in LAUNCH_FIELDS.items():
        if field in config.engine:
            config.engine[field] = value
    return config


def describe() -> str:
    """One line: this process's place in the group and its devices."""
    return (f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
            f"{jax.device_count()} {jax.default_backend()} device(s)")
