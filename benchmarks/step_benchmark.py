"""The GI-PIP attack step in gipip_jax vs the PyTorch reference, on the same work, in one run.

    python benchmarks/step_benchmark.py --out benchmarks/results/step_cpu.json          # CPU table
    python benchmarks/step_benchmark.py --models convnet --sides 32 --batches 1 --attacks 1 8
    (on a GPU: benchmarks/gpu_check.sh runs it with --check-precision highest --check-convs native --keep-going)
    python benchmarks/step_benchmark.py --no-torch ...    # JAX rows only (no PyTorch reference, no check; no torch needed)

For every (victim, image side, batch size): untrained victim (seed 0), real CIFAR-10 test targets
(bilinearly resized for 64 px), the shipped AE prior, GI-PIP's weights for that batch size. Before
any timing it asserts that gipip_jax's objective (native and patch-gradient convs) and the PyTorch
reference (benchmarks/torch_reference.py, weights ported through NumPy) give the same objective
value (relative difference < --tolerance) and pixel gradient (< --kink-tolerance) on the same inputs.

Rows (one per mode; the PyTorch and JAX timings of a workload are taken interleaved, so both see
the same machine load: PyTorch before, between and after the JAX rows, best of the three; every
timing is the best of two after a warm-up; CPU-seconds per step (process time) are recorded too,
as they are less sensitive to other processes on a shared machine):
- torch:            the PyTorch reference, one attack step after another (autograd.grad with
                    create_graph=True, Adam, MultiStepLR, box clamp): how the PyTorch suites run.
                    N attacks one after another cost N times this (the "sequential" baseline).
- job_native / job_patch_grad: the single-attack path of `gipip-jax attack` (the engine with one
                    attack on one device: no batching, a jitted lax.scan chunk) with the
                    victim's native convolutions / patch-gradient convolutions.
- engine_STRATEGY xN: the batched engine (`engine.Engine`, N attacks in one program; vmap_patches on
                    CPU, also native vmap on GPUs), timed with `Engine.measure` (via engine_throughput.py).
Per row: compile (s; torch: its first step), ms per step of all N attacks, attack-steps/s, the
ratio to the PyTorch sequential loop of the same N attacks, XLA's FLOP count of one attack step
(`compiled.cost_analysis()["flops"]` of the jitted native-conv step, so every mode is credited
with the same work), achieved GFLOP/s and its fraction of the assumed peak, XLA's peak-memory
estimate and the process's peak RSS so far. Load averages before and after go into the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from engine_throughput import Workload, one_attack, setup, time_plan
from gipip_jax import attack, engine
from gipip_jax.workdir import write_text

# PyTorch's OpenMP threads spin-wait by default; on a shared, oversubscribed CPU that collapses its
# speed (measured at load ~9 on 2 cores: 238-1818 ms per ConvNet step with the default policy vs 54 ms
# with PASSIVE, 59 ms with 1 thread), which would compare the OpenMP policy, not the work. Passive
# waiting is the default here; OMP_WAIT_POLICY=ACTIVE in the environment restores PyTorch's own default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import torch
    import torch_reference as reference
except ImportError as error:  # pragma: no cover  (fatal in main() unless --no-torch)
    torch = reference = None
    TORCH_MISSING = f"step_benchmark needs PyTorch: pip install torch==2.13.0 (or -e '.[bench]') ({error})"

ITERATIONS = 10_000  # only sets the schedule's milestones; timings are per step


def cpu_peak_flops() -> tuple[float, str]:
    """(peak fp32 FLOP/s, how it was assumed) for this CPU: cores x base GHz x 32 FLOP/cycle."""
    mhz = None
    try:
        with open("/proc/cpuinfo") as f:
            mhz = next(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    except (OSError, StopIteration):
        pass
    cores = os.cpu_count() or 1
    if mhz is None:
        return float("nan"), "unknown CPU clock"
    peak = cores * mhz * 1e6 * 32
    return peak, (f"{cores} cores x {mhz / 1000:.2f} GHz (/proc/cpuinfo, no boost assumed) x 32 fp32 FLOP/cycle "
                  f"(2 FMA pipes x 8 lanes x 2; AVX-512 on Zen 4 runs as 2x256 bit, so no gain over AVX2)")


def device_peak_flops() -> tuple[float, str]:
    if jax.default_backend() == "cpu":
        return cpu_peak_flops()
    kind = jax.devices()[0].device_kind
    table = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense TF32/bf16 tensor-core peaks (SXM)
    for name, peak in table.items():
        if name in kind:
            return peak, f"{kind}: {peak / 1e12:.0f} TFLOP/s dense bf16/TF32 tensor-core peak (SXM datasheet)"
    return float("nan"), f"{kind}: peak unknown"


def _optimizer():
    return attack.make_optimizer(0.1, ITERATIONS, signed=False)


def torch_attack(work: Workload, model: str, device: str):
    """The PyTorch reference attack on attack 0's target, with the victim and AE ported from JAX."""
    net = reference.port_victim(model, work.variables, work.info.num_classes).to(device)
    ae = reference.port_autoencoder(work.autoencoder[1]).to(device)
    labels = torch.tensor(work.labels[0], dtype=torch.int64, device=device)
    target = reference.target_gradients(net, reference.nhwc_to_nchw(work.info.normalize(work.x01[0])).to(device), labels)
    tv, anomaly = work.terms["tv"]["weight"], work.terms["anomaly"]["weight"]
    return reference.ReferenceAttack(net, target, labels, mean=work.info.mean, std=work.info.std, tv=tv,
                                     anomaly=anomaly, offset=work.terms["anomaly"]["offset"], ae=ae,
                                     iterations=ITERATIONS)


def check_equal(work: Workload, ref, tolerance: float, kink_tolerance: float,
                convs: tuple[str, ...] = ("native", "patch_grad")) -> dict:
    """Objective value and pixel gradient, JAX (each conv of `convs`) vs PyTorch, same x; asserts."""
    x = jax.random.normal(jax.random.key(7), work.x01.shape[1:], jnp.float32)
    grads, labels, terms = one_attack(work)
    t_value, t_grad = ref.value_and_grad(reference.nhwc_to_nchw(x))
    t_value, t_grad = float(t_value), t_grad.cpu().numpy().transpose(0, 2, 3, 1)
    found = {"torch_objective": t_value}
    for conv in convs:
        objective = work.build(conv)
        (value, _), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(x, grads, labels, terms)
        grad = np.asarray(grad)
        rel_value = abs(float(value) - t_value) / abs(t_value)
        rel_grad = float(np.linalg.norm(grad - t_grad) / np.linalg.norm(t_grad))
        found.update({f"{conv}_objective": float(value), f"{conv}_rel_value": rel_value, f"{conv}_rel_grad": rel_grad})
        # float32 convolutions that round differently at the ulp level (XLA's native conv, the im2col
        # matmul, oneDNN) can flip ReLU / max-pool decisions of activations sitting at a kink, so the
        # pixel gradient may differ more at some x (measured: ConvNet 64 px bs 4 patch_grad 5.9e-3,
        # ResNet-18 64 px bs 4 native 6.4e-4; < 4e-6 on every other workload); the objective value
        # must still agree to `tolerance`.
        if not (rel_value < tolerance and rel_grad < kink_tolerance):
            raise AssertionError(f"JAX ({conv}) and PyTorch disagree: objective {float(value)} vs {t_value} "
                                 f"(rel {rel_value:.2e}), pixel gradient rel {rel_grad:.2e} (tolerances {tolerance}, {kink_tolerance})")
    return found


@contextlib.contextmanager
def full_precision(enabled: bool):
    """With `enabled`: full fp32 matmuls/convs on both sides inside the block (JAX "highest", PyTorch
    TF32 off), the previous settings restored after it (--check-precision highest)."""
    if not enabled:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def step_flops(work: Workload) -> float:
    """XLA's FLOP count of one jitted attack step (native convs; one attack)."""
    step = attack.make_attack(work.build("native"), _optimizer(), work.info.bounds())
    grads, labels, terms = one_attack(work)
    state = step.init(jax.random.key(0), work.x01.shape[1:])
    cost = jax.jit(step.step).lower(state, grads, labels, terms).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_torch(ref, shape, steps: int, device: str) -> dict:
    """The reference's first step (its 'compile'), then the best of two runs of `steps` steps.
    On CUDA also its peak allocated memory (torch.cuda.max_memory_allocated)."""
    x0 = torch.randn(shape[0], shape[3], shape[1], shape[2], generator=torch.Generator().manual_seed(0))
    ref.start(x0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    ref.step()
    _sync(device)
    first = time.perf_counter() - start
    best, cpu = np.inf, time.process_time()
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(steps):
            ref.step()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / steps)
    cpu_step_s = (time.process_time() - cpu) / (2 * steps)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"compile_s": first, "step_s": best, "cpu_step_s": cpu_step_s, "xla_peak_mib": None, "torch_peak_mib": peak}


def time_job(work: Workload, conv: str, steps: int) -> dict:
    """The `gipip-jax attack` path: the engine with one attack on one device (no batching; one
    jitted lax.scan chunk of `steps` steps), the attacked victim pinned to convolutions `conv`.
    Timed as the engine rows (`time_plan`: compile, then the best of two chunks after a warm-up)."""
    eng = engine.Engine(lambda _: work.build(conv), _optimizer(), work.info.bounds(), work.info.denormalize,
                        shape=work.x01.shape[1:], chunk_size=steps, mesh=engine.make_mesh(jax.devices()[:1]))
    return time_plan(eng, engine.Plan("unroll", 1, 1), work.inputs, steps)


def attack_counts(model: str, side: int, batch: int, attacks: list[int], max_work: dict) -> list[int]:
    """The N of `attacks` whose work (N x batch x (side/32)^2 images) stays within the model's cap."""
    units = batch * (side / 32) ** 2
    return [n for n in attacks if n == 1 or n * units <= max_work[model]]


MODE_NAMES = {"torch": "PyTorch reference (sequential)", "job_native": "JAX attack job, native convs",
              "job_patch_grad": "JAX attack job, patch-grad convs", "engine_vmap_patches": "JAX engine, vmap_patches",
              "engine_vmap": "JAX engine, vmap (native convs)"}


def markdown(results: dict) -> str:
    """The BENCHMARKS.md table of a results JSON written by this script."""
    lines = ["| model | px | bs | mode | N | compile (s) | ms / step (all N) | attack-steps/s | vs PyTorch "
             "sequential (wall) | vs PyTorch (CPU time) | GFLOP/s | % of peak | XLA peak est. (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = {"convnet": "ConvNet", "resnet18": "ResNet-18"}
    for r in results["rows"]:
        mib = "" if r["xla_peak_mib"] is None else f"{r['xla_peak_mib']:.0f}"
        ratio, cpu_ratio = (("-" if v is None else f"{v:.2f}") for v in (r["vs_torch_sequential"], r["cpu_vs_torch_sequential"]))
        lines.append(f"| {names.get(r['model'], r['model'])} | {r['side']} | {r['batch']} | {MODE_NAMES.get(r['mode'], r['mode'])} "
                     f"| {r['attacks']} | {r['compile_s']:.1f} | {1000 * r['step_s']:.0f} | {r['attack_steps_per_s']:.2f} "
                     f"| {ratio} | {cpu_ratio} | {r['achieved_gflops']:.1f} "
                     f"| {100 * r['fraction_of_peak']:.1f} | {mib} |")
    return "\n".join(lines)


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["convnet", "resnet18"])
    parser.add_argument("--sides", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--attacks", nargs="+", type=int, default=[1, 8, 32],
                        help="N for the batched engine (CPU: 1..32; GPU: e.g. 1 8 64 512)")
    parser.add_argument("--max-work", nargs="+", default=["convnet=32", "resnet18=8"],
                        help="MODEL=U: batched rows only while N x batch x (side/32)^2 <= U (time and memory)")
    parser.add_argument("--steps", type=int, default=4,
                        help="timed steps per measurement for a 32 px bs-1 workload; divided by the work units "
                             "(batch x (side/32)^2) for bigger ones, at least 1")
    parser.add_argument("--torch-device", default=None, help="default: cuda when PyTorch sees a GPU, else cpu")
    parser.add_argument("--no-torch", action="store_true",
                        help="JAX rows only: no PyTorch reference rows, no JAX-vs-PyTorch check, the ratios to "
                             "PyTorch null (runs without torch installed; gpu_check.sh --toy uses it then)")
    parser.add_argument("--precision", default="default", choices=["default", "highest"],
                        help="highest: full fp32 matmuls/convs on both sides (JAX jax_default_matmul_precision, "
                             "PyTorch TF32 off); default: each library's default (on GPUs, TF32 may be used)")
    parser.add_argument("--strategies", nargs="+", default=None,
                        help="engine strategies for the batched rows (default: vmap_patches on CPU, where native "
                             "vmap hits slow grouped convolutions; vmap and vmap_patches elsewhere)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="objective-value tolerance")
    parser.add_argument("--kink-tolerance", type=float, default=1e-2,
                        help="pixel-gradient tolerance (float32 kinks; see check_equal)")
    parser.add_argument("--no-job", action="store_true", help="skip the job_native / job_patch_grad rows")
    parser.add_argument("--check-convs", nargs="+", default=["native", "patch_grad"], choices=["native", "patch_grad"],
                        help="the JAX convolutions checked against PyTorch before timing (each costs a compile)")
    parser.add_argument("--check-precision", default="same", choices=["same", "highest"],
                        help="highest: the equality check runs in full fp32 on both sides whatever --precision "
                             "times (TF32 rounding would exceed --tolerance); same: at --precision")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a failing workload or engine row (e.g. out of device memory) under 'errors' "
                             "and go on (larger N of that strategy are skipped); --out is rewritten after every "
                             "workload, so a run killed midway keeps the finished ones")
    parser.add_argument("--out", default=None)
    parser.add_argument("--table", default=None, help="print the markdown table of this results JSON and exit")
    args = parser.parse_args()
    if args.table:
        with open(args.table) as f:
            print(markdown(json.load(f)))
        return
    if torch is None and not args.no_torch:
        raise SystemExit(TORCH_MISSING)
    use_torch = not args.no_torch
    if args.torch_device is None:
        args.torch_device = "cuda" if use_torch and torch.cuda.is_available() else "cpu"
    max_work = {k: float(v) for k, v in (item.split("=") for item in args.max_work)}
    if args.precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
        if use_torch:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = args.torch_device
    strategies = args.strategies or (["vmap_patches"] if jax.default_backend() == "cpu" else ["vmap", "vmap_patches"])
    peak, peak_note = device_peak_flops()
    meta = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "load_before": load(),
            "backend": jax.default_backend(), "device": str(jax.devices()[0]), "machine": platform.machine(),
            "cpu": platform.processor() or "", "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads() if use_torch else None,
            "torch_device": args.torch_device if use_torch else None, "precision": args.precision,
            "pytorch_reference": "ok" if use_torch else "skipped (--no-torch)",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "peak_flops": peak, "peak_assumption": peak_note,
            **{p: importlib.metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy")},
            "torch": importlib.metadata.version("torch") if use_torch else None}
    print(json.dumps(meta), flush=True)
    rows, checks, errors, started = [], [], [], time.perf_counter()

    def save(final: bool) -> None:
        if final:
            meta.update(load_after=load(), wall_s=time.perf_counter() - started)
        if args.out:
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            found = {"meta": meta, "checks": checks, "rows": rows, **({"errors": errors} if args.keep_going else {})}
            write_text(args.out, json.dumps(found, indent=1))

    def failed(where: dict, error: BaseException) -> None:
        if not args.keep_going:
            raise error
        entry = {**where, "error": f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"}
        errors.append(entry)
        print(json.dumps(entry), flush=True)

    def workload(model: str, side: int, batch: int) -> None:
        counts = attack_counts(model, side, batch, args.attacks, max_work)
        work = setup(model, max(counts), side, batch)
        if use_torch:
            ref = torch_attack(work, model, device)
            with full_precision(args.check_precision == "highest"):
                equal = check_equal(work, ref, args.tolerance, args.kink_tolerance, tuple(args.check_convs))
            check = {"model": model, "side": side, "batch": batch, **equal}
            checks.append(check)
            print(json.dumps(check), flush=True)
        flops = step_flops(work)
        shape = work.x01.shape[1:]
        steps = max(1, int(args.steps // (batch * (side / 32) ** 2)))

        def reference_run() -> list:   # the PyTorch reference's timing (none with --no-torch)
            return [("torch", 1, time_torch(ref, shape, steps, device))] if use_torch else []

        found = reference_run()
        if not args.no_job:
            found += [(f"job_{conv}", 1, time_job(work, conv, steps)) for conv in ("native", "patch_grad")]
        found += reference_run()  # interleaved: again after JAX
        eng = engine.Engine(work.build, _optimizer(), work.info.bounds(), work.info.denormalize, shape=shape,
                            chunk_size=steps, mesh=engine.make_mesh(jax.devices()[:1]))
        for strategy in strategies:
            for n in counts:
                try:
                    found.append((f"engine_{strategy}", n, time_plan(eng, engine.Plan(strategy, n, 1), work.inputs, steps)))
                except Exception as error:  # noqa: BLE001  (only with --keep-going; else re-raised)
                    failed({"model": model, "side": side, "batch": batch, "mode": f"engine_{strategy}", "attacks": n}, error)
                    break   # a larger N of this strategy would fail the same way
        found += reference_run()  # and after the engine
        torch_runs = [r for mode, _, r in found if mode == "torch"]
        merged, torch_step, torch_cpu = [], None, None
        if torch_runs:
            torch_step = min(r["step_s"] for r in torch_runs)
            merged = [("torch", 1, {**torch_runs[0], "step_s": torch_step,
                                    "cpu_step_s": min(r["cpu_step_s"] for r in torch_runs),
                                    "torch_step_s_runs": [r["step_s"] for r in torch_runs]})]
            torch_cpu = merged[0][2]["cpu_step_s"]
        merged += [f for f in found if f[0] != "torch"]
        for mode, n, r in merged:
            row = {"model": model, "side": side, "batch": batch, "mode": mode, "attacks": n, "steps": steps, **r,
                   "attack_steps_per_s": n / r["step_s"],
                   "vs_torch_sequential": None if torch_step is None else torch_step * n / r["step_s"],
                   "cpu_vs_torch_sequential": None if torch_cpu is None else torch_cpu * n / r["cpu_step_s"],
                   "step_gflop": flops / 1e9, "achieved_gflops": flops * n / r["step_s"] / 1e9,
                   "fraction_of_peak": flops * n / r["step_s"] / peak,
                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            rows.append(row)
            print(json.dumps(row), flush=True)

    for model in args.models:
        for side in args.sides:
            for batch in args.batches:
                try:
                    workload(model, side, batch)
                except Exception as error:  # noqa: BLE001  (only with --keep-going; else re-raised)
                    failed({"model": model, "side": side, "batch": batch, "mode": "workload"}, error)
                if args.keep_going:
                    save(final=False)
    save(final=True)
    print(json.dumps(meta), flush=True)


if __name__ == "__main__":
    main()
