"""Runs one `gipip-jax` job as N processes on this machine (a local stand-in for a cluster launch).

    python -m gipip_jax.launch N [--devices-per-process D] [--port P] -- study --config ... --workdir W [--set ...]

Starts N processes of `python -m gipip_jax.cli ARGS...`, each with D fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=D, JAX_PLATFORMS=cpu; default D=2), and adds
`--set engine.distributed=True --set engine.coordinator=127.0.0.1:PORT --set engine.num_processes=N
--set engine.process_id=I` to process I's arguments (PORT: a free one unless --port). Their output
is streamed, each line prefixed with `[I] `. When a process exits non-zero the launcher waits a
second for the others (peers of a dead process stop by themselves, status 75: distributed.py),
terminates those left (SIGTERM, SIGKILL after 10 s), prints one `launch: failed: ...` line naming
the process that failed first (a cause, not a peer that stopped because of it) and exits with its
status (128 + S for a signal S); otherwise it exits 0 when all have finished. Ctrl-C (or SIGTERM)
terminates all of them.

On a cluster, start the same `gipip-jax study ... --set engine.distributed=True` command once per
node/GPU with the cluster's launcher (srun, TPU pod `--worker=all`): see BUILD.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


# distributed.PEER_LOST_STATUS (not imported: this module does not load JAX).
PEER_LOST_STATUS = 75


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_command(args: list[str], index: int, count: int, port: int) -> list[str]:
    """Process `index`'s command line: `python -m gipip_jax.cli ARGS` plus the four engine.* flags."""
    extra = ["--set", "engine.distributed=True", "--set", f"engine.coordinator=127.0.0.1:{port}",
             "--set", f"engine.num_processes={count}", "--set", f"engine.process_id={index}"]
    return [sys.executable, "-m", "gipip_jax.cli", *args, *extra]


def process_env(devices: int, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stream(index: int, pipe, lock: threading.Lock) -> None:
    for line in iter(pipe.readline, b""):
        with lock:
            sys.stdout.write(f"[{index}] {line.decode(errors='replace')}")
            if not line.endswith(b"\n"):
                sys.stdout.write("\n")
            sys.stdout.flush()
    pipe.close()


def _terminate(processes: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(count: int, args: list[str], devices: int = 2, port: int | None = None) -> int:
    """Runs the N processes; returns 0, or the first non-zero exit status (the others terminated)."""
    port = port or free_port()
    env = process_env(devices)
    lock = threading.Lock()
    print(f"launch: {count} process(es) x {devices} CPU device(s), coordinator 127.0.0.1:{port}", flush=True)
    processes, threads = [], []
    for index in range(count):
        p = subprocess.Popen(process_command(args, index, count, port), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        processes.append(p)
        print(f"launch: process {index} is pid {p.pid}", flush=True)
        t = threading.Thread(target=_stream, args=(index, p.stdout, lock), daemon=True)
        t.start()
        threads.append(t)

    def on_signal(signum, frame):
        _terminate(processes)
        sys.exit(128 + signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    status, stopped = 0, []
    try:
        seen: dict[int, float] = {}   # index -> when its exit was first seen
        while len(seen) < count:
            for index, p in enumerate(processes):
                if index not in seen and p.poll() is not None:
                    seen[index] = time.monotonic()
            failed = [i for i in seen if processes[i].returncode != 0]
            if failed:
                # Peers of a dead process stop within moments of it (their next collective fails): look
                # a little longer so the report names the cause, not a consequence.
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline and len(seen) < count:
                    time.sleep(0.1)
                    for index, p in enumerate(processes):
                        if index not in seen and p.poll() is not None:
                            seen[index] = time.monotonic()
                failed = [i for i in seen if processes[i].returncode != 0]
                first = min(failed, key=lambda i: (processes[i].returncode == PEER_LOST_STATUS,
                                                   processes[i].returncode == -signal.SIGABRT, seen[i], i))
                code = processes[first].returncode
                status = code if code > 0 else 128 - code   # killed by signal S: 128 + S
                with lock:
                    print(f"launch: process {first} {describe_exit(code)}; stopping the others",
                          file=sys.stderr, flush=True)
                stopped = [i for i, p in enumerate(processes) if p.poll() is None]
                _terminate(processes)
                break
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for t in threads:
        t.join(timeout=5)
    if status:
        others = "; ".join(f"process {i} " + ("was stopped by the launcher" if i in stopped else
                                              describe_exit(p.returncode))
                           for i, p in enumerate(processes) if i != first)
        print(f"launch: failed: process {first} {describe_exit(code)} first" + (f" ({others})" if others else "")
              + ". Rerun the same command to resume: attacks in results.jsonl are kept, a wave continues "
              "from its last checkpoint.", file=sys.stderr, flush=True)
    return status


def describe_exit(code: int) -> str:
    """A process's exit status in words (Popen.returncode: negative for a signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        what = {"SIGKILL": "killed", "SIGTERM": "terminated", "SIGABRT": "aborted"}.get(name, "killed")
        return f"was {what} by signal {-code} ({name})"
    if code == PEER_LOST_STATUS:
        return f"stopped after losing contact with another process (status {code})"
    return f"exited with status {code}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("gipip-jax: error: usage: python -m gipip_jax.launch N [--devices-per-process D] [--port P] "
              "-- COMMAND ARGS (e.g. study --config ... --workdir W)", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m gipip_jax.launch", description=__doc__.split("\n")[0])
    parser.add_argument("num_processes", type=int)
    parser.add_argument("--devices-per-process", type=int, default=2)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    options = parser.parse_args(argv[:split])
    args = argv[split + 1:]
    if options.num_processes < 1 or options.devices_per_process < 1 or not args:
        print("gipip-jax: error: N and --devices-per-process must be >= 1 and a command must follow --",
              file=sys.stderr)
        return 2
    return launch(options.num_processes, args, options.devices_per_process, options.port or None)


if __name__ == "__main__":
    sys.exit(main())
