"""Attack-steps/s of the batched engine vs the same attacks run one after another.

    python benchmarks/engine_throughput.py --models convnet resnet18 --attacks 1 8 32 --out BENCH.json

For each victim (untrained, CIFAR-10 shape 32x32x3, 10 classes, bs 1 per attack) and each N, it
times the GI-PIP step (cosine matching through the victim's gradient, TV, AS prior with the shipped
AE, Adam, box projection) as the engine runs it:
- sequential: the "unroll" strategy with 1 attack per device, i.e. one attack at a time, run for
  N attacks one after another (what every PyTorch suite does);
- batched: each strategy in --strategies with N attacks in one wave.
Reported per row: compile time (s), steady-state seconds per step of the N attacks, attack-steps/s,
XLA's peak-memory estimate for the program (MiB) and the process's peak RSS so far (MiB).
Real target updates: FedSGD gradients of the first N CIFAR-10 test images (unique labels not needed).
`setup` and `time_plan` are shared with benchmarks/step_benchmark.py (JAX vs the PyTorch reference).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gipip_jax import attack, checkpoints, data, engine
from gipip_jax.client import victim_gradient
from gipip_jax.assembly import resolve_path
from gipip_jax.objectives import make_objective
from gipip_jax.victims import make_victim
from gipip_jax.workdir import write_text

AE = "experiments/checkpoints/ae_cifar10_aux5"


class Workload(NamedTuple):
    """One benchmark workload: `count` attacks on a victim at one image size and batch size.

    x01: (count, batch, H, W, C) target images in [0, 1]; labels: int32 (count, batch);
    terms: the objective's term settings {"tv": {"weight": w}, "anomaly": {"weight": w, "offset": c}};
    inputs: the engine's AttackInputs (FedSGD updates of those targets); build(conv) -> objective.
    """

    info: data.DatasetInfo
    variables: dict
    autoencoder: tuple
    terms: dict
    x01: np.ndarray
    labels: np.ndarray
    inputs: engine.AttackInputs
    build: Callable


# GI-PIP's weights (DESIGN.md): bs 1: TV 1e-6, AS 1e-6; bs 4 CIFAR: TV 1e-5, AS 1e-4; bs 4 at 64 px: TV 5e-4.
def reference_weights(batch: int, side: int) -> dict:
    if batch == 1:
        return {"tv": 1e-6, "anomaly": 1e-6}
    return {"tv": 1e-5 if side <= 32 else 5e-4, "anomaly": 1e-4}


def reference_terms(batch: int, side: int, offset: float) -> dict:
    """GI-PIP's objective terms for a workload: TV and the AS prior with offset c = `offset`."""
    weights = reference_weights(batch, side)
    return {"tv": {"weight": weights["tv"]}, "anomaly": {"weight": weights["anomaly"], "offset": offset}}


def setup(model: str, count: int, side: int = 32, batch: int = 1) -> Workload:
    """Attack i targets CIFAR-10 test images i*batch ... (i+1)*batch - 1 (bilinearly resized to
    `side` px when side != 32), untrained victim (seed 0), the shipped AE prior."""
    test = data.load("cifar10", "test")
    info = test.info
    x01, labels = test.take(np.arange(count * batch))
    if side != info.image_shape[0]:
        info = dataclasses.replace(info, image_shape=(side, side, info.image_shape[2]))
        x01 = np.asarray(jax.image.resize(x01, (len(x01), *info.image_shape), "bilinear")).clip(0, 1)
    x01 = x01.reshape(count, batch, *info.image_shape).astype(np.float32)
    labels = labels.reshape(count, batch).astype(np.int32)
    victim = make_victim(model, info.num_classes, info.image_shape, conv="native")
    variables = victim.init(jax.random.key(0))
    module, ae_params, meta = checkpoints.load_autoencoder(resolve_path(AE))
    terms = reference_terms(batch, side, meta["as_offset"])
    grad = jax.jit(lambda x, y: victim_gradient(victim, variables, info.normalize(x), y))
    grads = [grad(x01[i], labels[i]) for i in range(count)]
    inputs = engine.AttackInputs(
        jax.tree.map(lambda *g: np.stack([np.asarray(v) for v in g]), *grads), labels,
        engine.per_attack_terms([terms] * count),
        np.asarray(jax.vmap(jax.random.key_data)(jax.random.split(jax.random.key(1), count))))

    def build(conv):
        v = make_victim(model, info.num_classes, info.image_shape, conv=conv)
        return make_objective(v, variables, info, terms=terms,
                              reconstruct=lambda x: module.apply({"params": ae_params}, x))

    return Workload(info, variables, (module, ae_params), terms, x01, labels, inputs, build)


def one_attack(work: Workload, i: int = 0):
    """Attack i's (target_grads, labels, term settings) as device arrays."""
    return (jax.tree.map(lambda a: jnp.asarray(a[i]), work.inputs.target_grads), jnp.asarray(work.labels[i]),
            jax.tree.map(lambda a: jnp.asarray(a[i]), work.inputs.terms))


def time_plan(eng: engine.Engine, plan: engine.Plan, inputs, steps: int) -> dict:
    """Compile `plan`, then time chunks of `steps` steps (best of 2 after a warm-up)."""
    start = time.perf_counter()
    program = eng.program(plan, inputs)
    compile_s = time.perf_counter() - start
    cpu = time.process_time()
    rate = eng.measure(program, inputs, steps, repeats=2)
    # CPU-seconds per step of all N attacks, over the warm-up and both timed chunks (3 chunks): less
    # sensitive than wall time to other processes sharing the machine.
    cpu_step_s = (time.process_time() - cpu) / (3 * steps)
    return {"compile_s": compile_s, "step_s": plan.wave_size / rate, "cpu_step_s": cpu_step_s,
            "xla_peak_mib": program.bytes_per_device / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["convnet", "resnet18"])
    parser.add_argument("--attacks", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--strategies", nargs="+", default=["vmap_patches", "unroll", "vmap"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--skip", nargs="*", default=[], help="MODEL:STRATEGY:N rows to skip (too slow)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for model in args.models:
        work = setup(model, max(args.attacks))
        info, inputs = work.info, work.inputs
        eng = engine.Engine(work.build, attack.make_optimizer(0.1, 10_000, signed=False), info.bounds(), info.denormalize,
                            shape=(1, *info.image_shape), chunk_size=args.steps, mesh=engine.make_mesh(jax.devices()[:1]))
        single = time_plan(eng, engine.Plan("unroll", 1, 1), inputs, args.steps)
        for n in args.attacks:
            # Sequential: N one-attack runs one after another, each at the single-attack step time.
            found = [{"model": model, "attacks": n, "mode": "sequential", **single, "step_s": single["step_s"] * n}]
            for strategy in args.strategies:
                if f"{model}:{strategy}:{n}" in args.skip or (n == 1 and strategy == "unroll"):
                    continue
                found.append({"model": model, "attacks": n, "mode": strategy,
                              **time_plan(eng, engine.Plan(strategy, n, 1), inputs, args.steps)})
            for r in found:
                r["attack_steps_per_s"] = n / r["step_s"]
                r["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(json.dumps(r), flush=True)
            rows += found
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "device": str(jax.devices()[0]),
            "machine": platform.machine(), "cpus": __import__("os").cpu_count()}
    if args.out:
        write_text(args.out, json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
