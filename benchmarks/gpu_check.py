"""The GPU check of issue 16 (item 3) in one command; run it through benchmarks/gpu_check.sh.

    bash benchmarks/gpu_check.sh [OUTDIR]          # on a GPU machine (default OUTDIR runs/gpu_check)
    bash benchmarks/gpu_check.sh --toy [OUTDIR]    # all three parts at toy sizes on the CPU (~2-3 min)

--toy also runs without PyTorch (CI installs only '.[test]'): part 1 then times the JAX rows only
(step_benchmark.py --no-torch: no PyTorch reference rows, no JAX-vs-PyTorch equality check, the
ratios to PyTorch null), gpu_check.json records "torch": null and "pytorch_reference": "skipped:
torch not installed", and the summary says so; parts 2 and 3 are JAX-only and run as usual. The
normal (GPU) mode needs torch. GPU_CHECK_NO_TORCH=1 (for testing) hides an installed torch from
every child process (a stub `torch` package first on PYTHONPATH that raises ModuleNotFoundError), so
the no-torch path can be exercised where torch is installed.

Parts, each in child processes with a time cap (a capped part keeps what it wrote and is marked
"timed_out"; --parts runs a subset, e.g. to rerun one with a larger cap):
  1 step      benchmarks/step_benchmark.py, once at 32 px, then at 64 px: bs 1, ConvNet and ResNet-18,
              N = 1, 64, 512 attacks in one engine program (strategy vmap) next to the PyTorch
              reference on the GPU (`--torch-device cuda`), timed at each library's default precision
              (TF32 convolutions on both sides) after the JAX-vs-PyTorch equality check in full fp32
              (`--check-precision highest`). Per row: attack-steps/s, the ratio "N batched JAX attacks
              vs N sequential PyTorch attacks", achieved fraction of peak (the harness's, and against
              the datasheet's dense TF32 and fp32 peaks). Cap 230 s for both runs.
  2 study     `gipip-jax study` with 64 attacks at the authors' CIFAR-10 budget (10,000 iterations):
              experiments/as_claim.py's cpu part b `convnet_bs1` (untrained ConvNet with PyTorch's
              init, bs 1, 16 train targets x λ_AS {0, 1e-4, 1e-2, 1e-1}, λ_TV 1e-6, reference-recipe
              AE), engine.strategy=auto with 64 attacks per device (the engine times vmap and
              vmap_patches at 64 and keeps the faster), LPIPS off, JAX_DEFAULT_MATMUL_PRECISION=
              tensorfloat32 (XLA's default for float32 on NVIDIA GPUs since Ampere, set explicitly).
              Wall time of the command and attack-steps/s of its wave, next to the PyTorch sequential
              estimate (part 1's ConvNet 32 px step x 64 x 10,000). Cap 150 s; if it is hit, the rate
              and step reached come from the study's progress lines.
  3 precision benchmarks/precision_check.py: the same 64 attacks at 1,000 iterations (same targets,
              settings, keys and engine plan as part 2), under jax.default_matmul_precision("highest")
              and "tensorfloat32", in one process: each PSNR, mean |ΔPSNR|, TF32's speedup. Cap 100 s.
              With --precision-iterations equal to part 2's (as in --toy), part 2 is reused as the TF32
              arm and only the fp32 arm runs.
Expected on one H100/H200 (an estimate; not measured, no GPU was lent): part 1 ~3-4 min (compiles
dominate), part 2 ~1.5-2.5 min, part 3 ~1-1.5 min; the caps bound the run at 8 min, plus a ~10 s
probe and the CIFAR-10 decode into the cache (seconds when cached; missing data: one error line, exit 2).

Output: OUTDIR/gpu_check.json (all three parts and the goals; also copied to --json, by default
benchmarks/results/gpu_check.json outside --toy), OUTDIR/step_*.json (step_benchmark.py's own JSON,
one per image size), OUTDIR/precision.json, the study
work directories and one log per part (OUTDIR/part*.log). A short summary against the goals
(64 batched attacks >= 20x 64 sequential PyTorch attacks and >= 25 % of peak) is printed last.
Without a GPU visible to JAX and PyTorch (outside --toy) it prints one error line and exits 2.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY_CONFIG = "experiments/configs/study_cifar10.py"
REFERENCE_AE = "experiments/checkpoints/ae_cifar10_aux5_reference"   # as_claim.py's REFERENCE_AE
GOAL_RATIO, GOAL_FRACTION, GOAL_N = 20.0, 0.25, 64
# Dense datasheet peaks (SXM): (fp32 on CUDA cores, TF32 tensor cores). NVIDIA's TF32 headline
# (989 TFLOP/s for H100/H200) is with 2:4 sparsity; dense TF32 is half of it.
PEAKS = {"H100": (66.9e12, 494.7e12), "H200": (66.9e12, 494.7e12), "A100": (19.5e12, 156e12)}

FULL = {
    # step_benchmark arguments; one run per entry of "step_runs" (32 px first: a cap cuts 64 px first)
    "step": ["--models", "convnet", "resnet18", "--batches", "1",
             "--attacks", "1", "64", "512", "--max-work", "convnet=2048", "resnet18=2048", "--steps", "20",
             "--strategies", "vmap", "--no-job", "--check-convs", "native", "--check-precision", "highest",
             "--precision", "default", "--torch-device", "cuda", "--keep-going"],
    "step_runs": [["--sides", "32"], ["--sides", "64"]],
    "study": dict(victim="convnet", image_size=None, targets=16, as_weights=[0.0, 1e-4, 1e-2, 1e-1], tv=1e-6,
                  iterations=10_000, strategy="auto", attacks_per_device=64, chunk_size=100, checkpoint_every=2000),
    "precision_iterations": 1000,
    "timeouts": {"step": 230, "study": 150, "precision": 100},
}
TOY = {
    "step": ["--models", "convnet_tiny", "--batches", "1", "--attacks", "1", "4",
             "--max-work", "convnet_tiny=64", "--steps", "2", "--strategies", "vmap_patches", "--no-job",
             "--check-convs", "native", "--check-precision", "highest", "--precision", "default",
             "--torch-device", "cpu", "--keep-going"],
    "step_runs": [["--sides", "16"]],
    "study": dict(victim="convnet_tiny", image_size=16, targets=2, as_weights=[0.0, 1e-4], tv=1e-6,
                  iterations=20, strategy="vmap_patches", attacks_per_device=4, chunk_size=5, checkpoint_every=10),
    "precision_iterations": 20,
    "timeouts": {"step": 300, "study": 300, "precision": 300},
}

PROGRESS = re.compile(r"wave (\d+)/(\d+)\s+step (\d+)/(\d+)\s+attacks done (\d+)/(\d+)\s+([\d.]+) attack-steps/s")


def error_exit(message: str) -> None:
    print(f"gpu_check: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


PROBE = r"""
import json
out = {}
try:
    import jax
    out.update(jax=jax.__version__, backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
               devices=len(jax.devices()))
except Exception as error:
    out["jax_error"] = f"{type(error).__name__}: {error}"
try:
    import torch
    out.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available())
    if torch.cuda.is_available():
        out["torch_device"] = torch.cuda.get_device_name(0)
except Exception as error:
    out["torch_error"] = f"{type(error).__name__}: {error}"
print(json.dumps(out))
"""


def probe(python: str, env: dict) -> dict:
    """What JAX and PyTorch see, from a child process (this process never initializes a GPU)."""
    done = subprocess.run([python, "-c", PROBE], env={**env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
                          capture_output=True, text=True, cwd=ROOT)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"jax_error": f"the probe failed (exit {done.returncode})"}


NO_TORCH_STUB = ("raise ModuleNotFoundError(\"No module named 'torch' (hidden by GPU_CHECK_NO_TORCH=1)\", "
                 "name='torch')\n")


def hide_torch(env: dict) -> None:
    """GPU_CHECK_NO_TORCH=1 (testing): a stub `torch` package first on the children's PYTHONPATH, so
    `import torch` fails in them as if torch were not installed (the directory is removed at exit)."""
    stub = tempfile.mkdtemp(prefix="gpu_check_no_torch_")
    atexit.register(shutil.rmtree, stub, True)
    os.makedirs(os.path.join(stub, "torch"))
    with open(os.path.join(stub, "torch", "__init__.py"), "w") as f:
        f.write(NO_TORCH_STUB)
    env["PYTHONPATH"] = os.pathsep.join([stub, *filter(None, [env.get("PYTHONPATH")])])


def check_devices(found: dict, toy: bool) -> None:
    """One error line and exit 2 when the run cannot work: no JAX, or (outside --toy) no torch or no GPU.
    With --toy and no torch, part 1 runs without the PyTorch reference (noted in `found`)."""
    if "jax_error" in found:
        error_exit(f"JAX does not start ({found['jax_error']})")
    if "torch_error" in found:
        if not toy:
            error_exit(f"PyTorch is missing for the reference ({found['torch_error']}): pip install -e '.[bench]'")
        found.update(torch=None, pytorch_reference="skipped: torch not installed")
    else:
        found["pytorch_reference"] = "ok"
    if toy:
        return
    if found.get("backend") not in ("gpu", "cuda", "rocm"):
        error_exit(f"no GPU: JAX's backend is {found.get('backend')} (jax {found.get('jax')}); install a CUDA "
                   "jax (pip install 'jax[cuda12]') on a GPU machine, or run with --toy")
    if not found.get("torch_cuda"):
        error_exit(f"no GPU for PyTorch: torch {found.get('torch')} sees no CUDA device; install a CUDA build of "
                   "torch==2.13.0, or run with --toy")


def warm_data(python: str, env: dict, sizes: list) -> None:
    """Decodes the CIFAR-10 splits the parts read into the cache (outside the parts' caps; the first
    use on a machine unpacks the archive); one error line and exit 2 when the data is missing."""
    code = ("import sys; from gipip_jax import data\n"
            "try:\n"
            f"    data.load('cifar10', 'test'); [data.load('cifar10', 'train', image_size=s) for s in {sizes!r}]\n"
            "except Exception as error:\n"
            "    print(' '.join(str(error).split())[:400], file=sys.stderr); sys.exit(1)\n")
    done = subprocess.run([python, "-c", code], env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        error_exit(f"CIFAR-10 is not readable ({last}); put cifar10.tar.gz where GIPIP_JAX_DATA points (BUILD.md)")


def run_part(name: str, command: list[str], log_path: str, timeout: float, env: dict) -> dict:
    """Runs `command` (its own process group), lines prefixed on stdout (cut at 220 characters) and
    whole in `log_path`; after `timeout` s SIGTERM to its group, SIGKILL 15 s later."""
    print(f"== part {name}: {' '.join(command)}  (cap {timeout:.0f} s; log {log_path})", flush=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                   env=env, start_new_session=True, bufsize=1)

        def pump():
            for line in process.stdout:
                stamp = f"[{name} {time.perf_counter() - started:6.1f}s] "
                log.write(stamp + line)
                log.flush()
                text = line.rstrip("\n")
                print(f"{stamp}{text[:200]}{' ...' if len(text) > 200 else ''}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            rc = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGTERM)
            try:
                rc = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                rc = process.wait()
        reader.join(timeout=10)
    wall = time.perf_counter() - started
    status = "timed_out" if timed_out else ("ok" if rc == 0 else "failed")
    print(f"== part {name}: {status} (exit {rc}) after {wall:.1f} s", flush=True)
    return {"status": status, "rc": rc, "wall_s": wall, "cap_s": timeout, "log": log_path}


def study_sets(c: dict, iterations: int, strategy: str, attacks_per_device: int) -> list[str]:
    """`--set` arguments of the part 2/3 study (as_claim.py's field set, at c's sizes)."""
    fields = {"name": "gpu_check", "data.name": "cifar10", "data.split": "train", "data.image_size": c["image_size"],
              "targets.starts": list(range(c["targets"])), "targets.batch_size": 1, "victim.name": c["victim"],
              "victim.init": "torch", "attack.iterations": iterations, "attack.restart_selection": "matching",
              "grid.tv_weight": [c["tv"]], "grid.as_weight": c["as_weights"], "prior.checkpoint": REFERENCE_AE,
              "metrics.lpips_net": None, "engine.strategy": strategy, "engine.attacks_per_device": attacks_per_device,
              "engine.chunk_size": c["chunk_size"], "engine.checkpoint_every": c["checkpoint_every"]}
    return [f"{key}={value!r}" if not isinstance(value, str) else f"{key}={value}" for key, value in fields.items()]


def load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def peaks(device_kind: str) -> tuple[float, float] | None:
    return next((p for name, p in PEAKS.items() if name in (device_kind or "")), None)


def step_summary(step: dict | None, device_kind: str, gpu: bool) -> dict:
    """Per workload: PyTorch's step, and per engine row N the ratio and fractions of peak; goals at N=64."""
    if not step:
        return {"workloads": [], "errors": []}
    fp32_tf32 = peaks(device_kind) if gpu else None
    workloads = {}
    for r in step["rows"]:
        key = (r["model"], r["side"], r["batch"])
        w = workloads.setdefault(key, {"model": r["model"], "side": r["side"], "batch": r["batch"], "rows": []})
        if r["mode"] == "torch":
            w["torch_step_ms"] = 1000 * r["step_s"]
            w["torch_attack_steps_per_s"] = r["attack_steps_per_s"]
            continue
        row = {"mode": r["mode"], "attacks": r["attacks"], "step_ms": 1000 * r["step_s"],
               "attack_steps_per_s": r["attack_steps_per_s"], "vs_torch_sequential": r["vs_torch_sequential"],
               "achieved_tflops": r["achieved_gflops"] / 1e3, "fraction_of_peak_harness": r["fraction_of_peak"],
               "compile_s": r["compile_s"], "xla_peak_mib": r["xla_peak_mib"]}
        if fp32_tf32:
            row["fraction_of_fp32_peak"] = r["achieved_gflops"] * 1e9 / fp32_tf32[0]
            row["fraction_of_tf32_dense_peak"] = r["achieved_gflops"] * 1e9 / fp32_tf32[1]
        # The goal's peak: dense TF32 on a known GPU (the default precision times TF32), else the harness's.
        row["fraction_of_peak"] = row.get("fraction_of_tf32_dense_peak", r["fraction_of_peak"])
        w["rows"].append(row)
    for w in workloads.values():
        at = [row for row in w["rows"] if row["attacks"] == GOAL_N]
        if at:
            best = max(at, key=lambda row: row["attack_steps_per_s"])
            ratio = best["vs_torch_sequential"]   # None without the PyTorch reference (--toy without torch)
            w["goal"] = {"attacks": GOAL_N, "mode": best["mode"], "vs_torch_sequential": ratio,
                         "fraction_of_peak": best["fraction_of_peak"],
                         "ratio_met": None if ratio is None else ratio >= GOAL_RATIO,
                         "peak_met": best["fraction_of_peak"] >= GOAL_FRACTION}
    return {"meta": step.get("meta"), "checks": step.get("checks"), "errors": step.get("errors", []),
            "workloads": list(workloads.values())}


def study_summary(workdir: str, log_path: str, attacks: int, iterations: int, torch_step_s: float | None) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from precision_check import study_numbers

    numbers = study_numbers(workdir) if os.path.isdir(workdir) else {}
    out = {"attacks": attacks, "iterations": iterations,
           **{k: numbers.get(k) for k in ("records", "ok", "attack_steps", "wave_seconds", "attack_steps_per_s", "plan")}}
    psnr = {}
    for attack_id, value in (numbers.get("psnr") or {}).items():
        psnr.setdefault(str(numbers["as_weight"][attack_id]), []).append(value)
    out["mean_psnr_by_as_weight"] = {w: sum(v for v in vs if v is not None) / max(1, sum(v is not None for v in vs))
                                     for w, vs in sorted(psnr.items(), key=lambda item: float(item[0]))}
    last = None
    try:
        with open(log_path) as f:
            for line in f:
                match = PROGRESS.search(line)
                if match:
                    last = match
    except OSError:
        pass
    if last:   # the study's own progress line: steps reached, its rate since the wave started
        out["last_progress"] = {"step": int(last.group(3)), "of": int(last.group(4)),
                                "attack_steps_per_s": float(last.group(7))}
    if torch_step_s:
        out["pytorch_sequential_estimate_s"] = torch_step_s * attacks * iterations
        if out.get("wave_seconds"):
            out["vs_pytorch_sequential"] = out["pytorch_sequential_estimate_s"] / out["wave_seconds"]
        elif last:
            out["vs_pytorch_sequential"] = float(last.group(7)) * torch_step_s
    return out


def fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_summary(result: dict) -> None:
    m, toy = result["meta"], result["meta"]["toy"]
    no_torch = m.get("pytorch_reference", "ok") != "ok"
    print(f"\n== GPU check summary ({'TOY: CPU, tiny sizes; the numbers say nothing about the goals' if toy else m.get('device_kind')}; "
          f"jax {m.get('jax')}, torch {'not installed' if no_torch else m.get('torch')}; {m['wall_s']:.0f} s) -> {m['json']}")
    if no_torch:
        print(f"PyTorch reference {m['pytorch_reference']}: part 1 timed the JAX rows only (no PyTorch rows, no "
              "JAX-vs-PyTorch equality check), no ratios to PyTorch")
    s = result["step"]
    print(f"1 step benchmark [{s['status']}, {s['wall_s']:.0f} s]: attack-steps/s; N batched JAX attacks vs N sequential "
          f"PyTorch attacks; % of peak (goal at N={GOAL_N}: >= {GOAL_RATIO:.0f}x and >= {100 * GOAL_FRACTION:.0f} %)")
    for w in s["workloads"]:
        cells = [f"N={r['attacks']}: {r['attack_steps_per_s']:.0f}/s "
                 + ("" if r["vs_torch_sequential"] is None else f"{r['vs_torch_sequential']:.1f}x ")
                 + f"{100 * r['fraction_of_peak']:.1f}%" for r in w["rows"]]
        goal = w.get("goal")
        verdict = "" if toy or not goal else (f"  ratio {'MET' if goal['ratio_met'] else 'NOT met'}, "
                                              f"peak {'MET' if goal['peak_met'] else 'NOT met'}")
        print(f"  {w['model']} {w['side']} px bs {w['batch']}: PyTorch "
              f"{'skipped' if no_torch else fmt(w.get('torch_step_ms')) + ' ms/step'} | "
              + " | ".join(cells) + verdict)
    for e in s["errors"]:
        print(f"  error {e.get('model')} {e.get('side')} px {e.get('mode')} N={e.get('attacks', '-')}: {e['error'][:160]}")
    st = result["study"]
    print(f"2 study, {st['attacks']} attacks x {st['iterations']} iterations [{st['status']}]: wall {st['wall_s']:.0f} s "
          f"(whole command), {fmt(st.get('attack_steps_per_s'), '.0f')} attack-steps/s in the wave "
          f"({fmt(st.get('wave_seconds'))} s; plan {(st.get('plan') or {}).get('strategy')} x"
          f"{(st.get('plan') or {}).get('attacks_per_device')}), vs sequential PyTorch "
          f"{'skipped' if no_torch else fmt(st.get('vs_pytorch_sequential')) + 'x'}; mean PSNR by λ_AS "
          + ", ".join(f"{w}: {v:.2f}" for w, v in st.get("mean_psnr_by_as_weight", {}).items()))
    if st["status"] != "ok" and st.get("last_progress"):
        lp = st["last_progress"]
        print(f"  stopped at step {lp['step']}/{lp['of']} ({lp['attack_steps_per_s']:.0f} attack-steps/s)")
    p = result["precision"]
    print(f"3 fp32 vs TF32, same {p.get('compared', 0)} attacks x {p['iterations']} iterations [{p['status']}]: "
          f"mean |ΔPSNR| {fmt(p.get('mean_abs_delta_psnr'), '.3f')} dB (mean Δ {fmt(p.get('mean_delta_psnr'), '+.3f')}, "
          f"max |Δ| {fmt(p.get('max_abs_delta_psnr'), '.3f')}); PSNR fp32 {fmt(p.get('mean_psnr_fp32'), '.2f')}, "
          f"TF32 {fmt(p.get('mean_psnr_tf32'), '.2f')} dB; TF32 speedup {fmt(p.get('tf32_speedup'), '.2f')}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("outdir", nargs="?", default=None, help="default runs/gpu_check (runs/gpu_check_toy with --toy)")
    parser.add_argument("--toy", action="store_true", help="tiny sizes on the CPU, torch on the CPU (also GPU_CHECK_TOY=1); "
                                                          "without torch, part 1 runs without the PyTorch reference "
                                                          "(for testing: GPU_CHECK_NO_TORCH=1 hides an installed torch)")
    parser.add_argument("--json", default=None, help="where else to copy gpu_check.json (default outside --toy: "
                                                     "benchmarks/results/gpu_check.json; 'none': nowhere)")
    parser.add_argument("--parts", default="1,2,3", help="run only these parts, e.g. 2 or 1,3; the others keep their "
                                                          "results from OUTDIR's previous gpu_check.json")
    parser.add_argument("--step-timeout", type=float, default=None)
    parser.add_argument("--study-timeout", type=float, default=None)
    parser.add_argument("--precision-timeout", type=float, default=None)
    parser.add_argument("--precision-iterations", type=int, default=None)
    parser.add_argument("--step-args", default="", help="extra arguments for step_benchmark.py, e.g. "
                                                        "'--attacks 1 64 --max-work convnet=256 resnet18=256' (last wins)")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or set(args.parts) - {"1", "2", "3"}:
        parser.error(f"--parts: a comma-separated subset of 1,2,3, not {','.join(args.parts)!r}")
    toy = args.toy or os.environ.get("GPU_CHECK_TOY") == "1"
    c = TOY if toy else FULL
    outdir = os.path.abspath(args.outdir or ("runs/gpu_check_toy" if toy else "runs/gpu_check"))
    copy_to = args.json if args.json is not None else (None if toy else os.path.join(ROOT, "benchmarks/results/gpu_check.json"))
    copy_to = None if copy_to == "none" else copy_to
    python = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    if toy:   # the CPU, and fast compiles (the tests' setting): toy numbers are not benchmarks anyway
        env.setdefault("JAX_PLATFORMS", "cpu")
        env.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    if os.environ.get("GPU_CHECK_NO_TORCH") == "1":   # testing: behave as if torch were not installed
        hide_torch(env)
    found = probe(python, env)
    check_devices(found, toy)
    no_torch = found["pytorch_reference"] != "ok"
    data_started = time.perf_counter()
    warm_data(python, env, [c["study"]["image_size"]])
    found["data_warm_s"] = time.perf_counter() - data_started
    os.makedirs(outdir, exist_ok=True)
    timeouts = {**c["timeouts"], **{k: v for k, v in (("step", args.step_timeout), ("study", args.study_timeout),
                                                        ("precision", args.precision_timeout)) if v is not None}}
    started = time.perf_counter()
    result = {"meta": {"toy": toy, "outdir": outdir, "command": " ".join(sys.argv), "caps_s": timeouts,
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), **found, "json": copy_to or
                       os.path.join(outdir, "gpu_check.json")}}
    gpu = found.get("backend") in ("gpu", "cuda", "rocm")
    skipped = {"status": "skipped", "rc": None, "wall_s": 0.0}
    # a part left out by --parts keeps its entry of this OUTDIR's previous gpu_check.json (rerun one part)
    previous = load_json(os.path.join(outdir, "gpu_check.json")) or {}

    # 1: the step benchmark next to the PyTorch reference.
    step_paths = [os.path.join(outdir, f"step_{i + 1}.json") for i in range(len(c["step_runs"]))]
    if "1" in args.parts:
        part_env = dict(env)
        if gpu:   # JAX's preallocation leaves PyTorch (same process) the rest; XLA gets 85 % instead of 75 %
            part_env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.85")
        runs, deadline = [], time.perf_counter() + timeouts["step"]
        for i, (extra, path) in enumerate(zip(c["step_runs"], step_paths)):
            if os.path.exists(path):
                os.remove(path)
            left = deadline - time.perf_counter()
            if left < 5:
                runs.append({"status": "timed_out", "rc": None, "wall_s": 0.0, "note": "no time left in the cap"})
                continue
            command = [python, "benchmarks/step_benchmark.py", *c["step"], *(["--no-torch"] if no_torch else []), *extra,
                       *args.step_args.split(), "--out", path]
            runs.append(run_part("step", command, os.path.join(outdir, f"part1_step_{i + 1}.log"), left, part_env))
        statuses = [r["status"] for r in runs]
        run1 = {"status": next((st for st in ("failed", "timed_out") if st in statuses), "ok"),
                "wall_s": sum(r["wall_s"] for r in runs), "cap_s": timeouts["step"], "runs": runs}
    else:
        run1 = dict(skipped)
    step_files = [found_step for found_step in map(load_json, step_paths) if found_step]
    merged_step = None if not step_files else {
        "meta": [f["meta"] for f in step_files], "checks": [x for f in step_files for x in f["checks"]],
        "rows": [x for f in step_files for x in f["rows"]], "errors": [x for f in step_files for x in f.get("errors", [])]}
    result["step"] = {**run1, **step_summary(merged_step, found.get("device_kind", ""), gpu)}
    torch_32 = next((w.get("torch_step_ms") for w in result["step"]["workloads"]
                     if w["model"] == c["study"]["victim"] and w["batch"] == 1
                     and w["side"] == (c["study"]["image_size"] or 32)), None)

    # 2: a 64-attack study at the full budget through the CLI.
    s = c["study"]
    attacks = s["targets"] * len(s["as_weights"])
    study_dir = os.path.join(outdir, "part2_study")
    study_log = os.path.join(outdir, "part2_study.log")
    if "2" in args.parts:
        shutil.rmtree(study_dir, ignore_errors=True)
        command = [python, "-m", "gipip_jax.cli", "study", "--config", STUDY_CONFIG, "--workdir", study_dir,
                   *[item for value in study_sets(s, s["iterations"], s["strategy"], s["attacks_per_device"])
                     for item in ("--set", value)]]
        # explicitly TF32 (XLA's default for float32 on NVIDIA GPUs since Ampere; ignored on CPUs), so
        # part 2 is also part 3's TF32 arm when their iterations agree (as in --toy)
        run2 = run_part("study", command, study_log, timeouts["study"],
                        {**env, "JAX_DEFAULT_MATMUL_PRECISION": "tensorfloat32"})
    else:
        run2 = dict(skipped)
    result["study"] = {**run2, **study_summary(study_dir, study_log, attacks, s["iterations"],
                                               None if torch_32 is None else torch_32 / 1000)}

    # 3: fp32 vs TF32 on the same attacks, the plan pinned to part 2's choice.
    plan = result["study"].get("plan") or {}
    strategy = plan.get("strategy") or (s["strategy"] if s["strategy"] != "auto" else "vmap")
    apd = plan.get("attacks_per_device") or s["attacks_per_device"]
    iterations = args.precision_iterations or c["precision_iterations"]
    precision_path = os.path.join(outdir, "precision.json")
    if "3" in args.parts:
        if os.path.exists(precision_path):
            os.remove(precision_path)
        reuse = []
        if iterations == s["iterations"] and result["study"]["status"] == "ok" and result["study"].get("ok") == attacks:
            # same attacks, iterations and plan (part 3 runs part 2's plan) as part 2: its TF32 arm
            reuse = ["--reuse", f"tensorfloat32={study_dir}", "--arms", "highest"]
        command = [python, "benchmarks/precision_check.py", "--workdir", os.path.join(outdir, "part3_precision"),
                   "--out", precision_path, *reuse, *[item for value in study_sets(s, iterations, strategy, apd)
                                                      for item in ("--set", value)]]
        run3 = run_part("precision", command, os.path.join(outdir, "part3_precision.log"), timeouts["precision"], env)
    else:
        run3 = dict(skipped)
    precision = load_json(precision_path) or {}
    result["precision"] = {**run3, "iterations": iterations, "attacks": attacks,
                           **{k: v for k, v in precision.items() if k not in ("set",)}}

    for number, name in (("1", "step"), ("2", "study"), ("3", "precision")):
        if number not in args.parts and name in previous:
            result[name] = {**previous[name], "kept_from_previous_run": True}
    goals = [w["goal"] for w in result["step"]["workloads"] if "goal" in w]
    result["goals"] = {"attacks": GOAL_N, "ratio": GOAL_RATIO, "fraction_of_peak": GOAL_FRACTION,
                       "peak_used": "dense TF32 datasheet peak" if gpu and peaks(found.get("device_kind", ""))
                       else "the step benchmark's assumed peak",
                       "ratio_met_all": all(g["ratio_met"] for g in goals)
                       if goals and all(g["ratio_met"] is not None for g in goals) else None,
                       "peak_met_all": all(g["peak_met"] for g in goals) if goals else None,
                       "study_vs_pytorch_sequential": result["study"].get("vs_pytorch_sequential"),
                       "meaningful": not toy}
    result["meta"]["wall_s"] = time.perf_counter() - started
    path = os.path.join(outdir, "gpu_check.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    if copy_to:
        os.makedirs(os.path.dirname(os.path.abspath(copy_to)), exist_ok=True)
        shutil.copyfile(path, copy_to)
    print_summary(result)
    failed = [name for name in ("step", "study", "precision") if result[name]["status"] == "failed"]
    if failed:
        print(f"gpu_check: part(s) {', '.join(failed)} failed; see their logs in {outdir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
