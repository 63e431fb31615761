"""Study overhead as a study grows: wall time vs engine compute for N attacks through the normal CLI.

    python benchmarks/study_scale.py --sizes 16 128 1024 --out benchmarks/results/study_scale.json

For each N, a fresh process runs `gipip-jax study` (cli.main, in-process so it can be timed) on
experiments/configs/study_cifar10.py with a tiny victim and few iterations, N attacks =
targets.starts=range(N/2) x grid.as_weight=[0, 1e-4], in a fresh work directory. The process
wraps the study's functions with timers (nothing else changes) and writes them as JSON:

- startup: imports + Study() (data, victim, AE prior, engine build) + plan + compile of the program;
  per study, not per attack.
- compute: time inside Engine.run_wave outside its on_chunk callback (program init, chunks,
  evaluate, the final device->host copy), measured after blocking on each chunk's state.
- overhead: everything else, i.e. wall - startup - compute: client updates (the shared updates),
  traces (on_chunk's diagnose + PSNR), checkpoints, metrics (incl. LPIPS), record building,
  results writing, reconstructions, grid, summary table. Broken down by the wrapped functions.

The scaling check: marginal seconds per attack from 128 to 1,024 vs from 16 to 128 (should be within
1.5x: nothing per attack grows with the study). Record the machine load (uptime) with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "configs", "study_cifar10.py")


def study_args(n: int, workdir: str, a: argparse.Namespace) -> list[str]:
    starts = list(range(n // 2))
    return ["study", "--config", os.path.abspath(CONFIG), "--workdir", workdir,
            "--set", f"victim.name={a.victim}", "--set", f"data.image_size={a.image_size}",
            "--set", f"attack.iterations={a.iterations}", "--set", f"engine.chunk_size={a.chunk_size}",
            "--set", f"engine.checkpoint_every={a.checkpoint_every}", "--set", "engine.strategy=vmap_patches",
            "--set", f"engine.attacks_per_device={a.wave}", "--set", f"targets.starts={starts}",
            "--set", "grid.as_weight=[0.0, 0.0001]", "--set", f"metrics.lpips_net={a.lpips}"]


def child(n: int, workdir: str, a: argparse.Namespace, out: str) -> None:
    """Runs one study in this process with timers around its parts; writes the timings to `out`."""
    t0 = time.perf_counter()
    import jax

    from gipip_jax import cli, engine, metrics, results, study, summarize
    timers: dict[str, float] = {}
    calls: dict[str, int] = {}
    imports = time.perf_counter() - t0

    stack: list[float] = []   # time of nested timed calls, per open call: timers are exclusive

    def add(key, seconds, exclusive):
        timers[key] = timers.get(key, 0.0) + exclusive
        calls[key] = calls.get(key, 0) + 1
        if stack:
            stack[-1] += seconds

    def timed(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            stack.append(0.0)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                add(key, seconds, seconds - stack.pop())
        setattr(owner, name, wrapper)

    original_run_wave = engine.Engine.run_wave

    def run_wave(self, program, inputs, iterations, *, state=None, on_chunk=None, device_inputs=None):
        last = [time.perf_counter()]

        def timed_chunk(s):
            jax.block_until_ready(s)
            now = time.perf_counter()
            add("compute", now - last[0], now - last[0])
            on_chunk(s)
            last[0] = time.perf_counter()
        out_ = original_run_wave(self, program, inputs, iterations, state=state, on_chunk=timed_chunk,
                                 device_inputs=device_inputs)
        now = time.perf_counter()
        add("compute", now - last[0], now - last[0])
        return out_
    engine.Engine.run_wave = run_wave

    timed(study.Study, "__init__", "study_init")
    timed(study.Study, "_client_updates", "client_updates")
    timed(study.Study, "plan", "plan")
    timed(engine.Engine, "program", "compile")
    timed(study, "_run_wave", "waves")
    timed(study.Trace, "maybe_take", "trace")
    timed(study, "_record", "record")
    timed(metrics, "evaluate", "metrics")
    for name in ("evaluate_batch",):   # the batched evaluation, where there is one
        if hasattr(metrics, name):
            timed(metrics, name, "metrics")
    timed(results, "append_record", "results_write")
    if hasattr(results, "append_records"):
        timed(results, "append_records", "results_write")
    timed(results, "read_records", "read_records")
    timed(study.ocp.CheckpointManager, "save", "checkpoint")
    timed(study.np, "savez_compressed", "reconstructions")
    timed(study, "_save_grid", "grid")
    timed(summarize, "table", "summary")
    start = time.perf_counter()
    code = cli.main(study_args(n, workdir, a))
    run = time.perf_counter() - start
    assert code == 0, f"study exited with {code}"
    with open(os.path.join(workdir, "results.jsonl")) as f:
        count = sum(1 for _ in f)
    assert count == n, f"{count} records for {n} attacks"
    with open(out, "w") as f:
        json.dump({"attacks": n, "imports": imports, "run": run, "wall": imports + run, "timers": timers,
                   "calls": calls, "backend": jax.default_backend()}, f, indent=2)


def summarize_run(t: dict) -> dict:
    """Timers are exclusive (a timed call's time excludes the timed calls inside it), so Study.plan's
    time excludes the client updates and the compile it triggers."""
    timers = t["timers"]
    startup = t["imports"] + sum(timers.get(k, 0) for k in ("study_init", "plan", "compile"))
    compute = timers.get("compute", 0)
    overhead = t["wall"] - startup - compute
    n = t["attacks"]
    return {"attacks": n, "wall_s": t["wall"], "startup_s": startup, "compute_s": compute, "overhead_s": overhead,
            "compute_per_attack_s": compute / n, "overhead_per_attack_s": overhead / n,
            "wall_per_attack_s": t["wall"] / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 128, 1024])
    p.add_argument("--out", default="benchmarks/results/study_scale.json")
    p.add_argument("--workroot", default="/tmp/study_scale")
    p.add_argument("--victim", default="convnet_tiny")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--chunk-size", type=int, default=5)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--wave", type=int, default=16, help="engine.attacks_per_device (1 CPU device: the wave size)")
    p.add_argument("--lpips", default="alexnet")
    p.add_argument("--label", default="", help="a note stored with the results (e.g. the commit)")
    p.add_argument("--child", nargs=3, metavar=("N", "WORKDIR", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(int(a.child[0]), a.child[1], a, a.child[2])
        return
    rows = []
    for n in a.sizes:
        workdir = os.path.join(a.workroot, f"n{n}")
        shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(a.workroot, exist_ok=True)
        timings = os.path.join(a.workroot, f"n{n}.json")
        load_before = os.getloadavg()
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(n), workdir, timings,
                        *_passthrough(a)], check=True, stdout=subprocess.DEVNULL)
        t = json.load(open(timings))
        row = {**summarize_run(t), "timers": t["timers"], "calls": t["calls"], "imports_s": t["imports"],
               "load_before": load_before, "load_after": os.getloadavg()}
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                          if k not in ("timers", "calls")}), flush=True)
        print("   ", {k: round(v, 2) for k, v in sorted(t["timers"].items())}, flush=True)
    marginal = []
    for small, big in zip(rows, rows[1:]):
        d = big["attacks"] - small["attacks"]
        marginal.append({"from": small["attacks"], "to": big["attacks"],
                         "wall_per_attack_s": (big["wall_s"] - small["wall_s"]) / d,
                         "compute_per_attack_s": (big["compute_s"] - small["compute_s"]) / d,
                         "overhead_per_attack_s": (big["overhead_s"] - small["overhead_s"]) / d})
    for m in marginal:
        print(f"marginal {m['from']} -> {m['to']}: {m['wall_per_attack_s']:.4f} s/attack "
              f"(compute {m['compute_per_attack_s']:.4f}, overhead {m['overhead_per_attack_s']:.4f})")
    if len(marginal) >= 2:
        print(f"ratio: {marginal[-1]['wall_per_attack_s'] / marginal[-2]['wall_per_attack_s']:.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"command": " ".join(["python", *sys.argv]), "label": a.label, "machine": platform.platform(),
                   "cpus": os.cpu_count(), "processor": platform.processor(), "rows": rows, "marginal": marginal,
                   "settings": {k: v for k, v in vars(a).items() if k != "child"}}, f, indent=2)


def _passthrough(a: argparse.Namespace) -> list[str]:
    return ["--victim", a.victim, "--image-size", str(a.image_size), "--iterations", str(a.iterations),
            "--chunk-size", str(a.chunk_size), "--checkpoint-every", str(a.checkpoint_every),
            "--wave", str(a.wave), "--lpips", a.lpips]


if __name__ == "__main__":
    main()
