"""One study across several processes: `jax.distributed.initialize` as `gipip-jax study` needs it.

`initialize(config.engine)` is what `study.run` calls when `engine.distributed=True`:

* CPU collectives: sets `jax_cpu_collectives_implementation` to "gloo" before JAX's backends are
  created, so processes with (fake) CPU devices form one collective group with no other flag.
  (In jax 0.10 "gloo" is already the default; set explicitly so an environment that changed it,
  or an older/newer default, does not leave CPU processes without cross-process collectives.)
* Timeouts: a coordinator on this machine (127.0.0.1, localhost) gets short ones, so a missing
  peer, an unreachable coordinator or a process killed mid-study ends every other process with a
  message within about a minute instead of JAX's defaults (5 min to start, 100 s heartbeats,
  5 min shutdown). Elsewhere (SLURM, TPU pods) JAX's defaults hold. Either can be set with
  `engine.init_timeout_s` / `engine.heartbeat_timeout_s` where a config has those fields, else the
  environment variables GIPIP_JAX_INIT_TIMEOUT_S / GIPIP_JAX_HEARTBEAT_TIMEOUT_S.
* Errors: a failure to start (no coordinator, a peer that never came) raises `DistributedError`
  (a ValueError: `gipip-jax` prints one line `gipip-jax: error: ...` and exits with status 2).

Launch several local processes with `python -m gipip_jax.launch N -- study ...` (launch.py).
"""

from __future__ import annotations

import os
import socket
import time

import jax

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# (initialization, heartbeat, shutdown) timeouts in seconds for a coordinator on this machine.
LOCAL_TIMEOUTS = (60, 20, 30)


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


def describe() -> str:
    """One line: this process's place in the group and its devices."""
    return (f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
            f"{jax.device_count()} {jax.default_backend()} device(s)")
