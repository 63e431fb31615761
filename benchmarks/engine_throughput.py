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
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import jax
import numpy as np

from gipip_jax import attack, checkpoints, data, engine
from gipip_jax.client import victim_gradient
from gipip_jax.jobs import resolve_path
from gipip_jax.objectives import ObjectiveWeights, make_objective
from gipip_jax.victims import make_victim

AE = "experiments/checkpoints/ae_cifar10_aux5"


def setup(model: str, count: int):
    test = data.load("cifar10", "test")
    info = test.info
    victim = make_victim(model, info.num_classes, info.image_shape)
    variables = victim.init(jax.random.key(0))
    module, ae_params, meta = checkpoints.load_autoencoder(resolve_path(AE))
    x01, labels = test.take(np.arange(count))
    grad = jax.jit(lambda x, y: victim_gradient(victim, variables, info.normalize(x), y))
    grads = [grad(x01[i:i + 1], labels[i:i + 1]) for i in range(count)]
    inputs = engine.AttackInputs(
        jax.tree.map(lambda *g: np.stack([np.asarray(v) for v in g]), *grads), labels[:, None].astype(np.int32),
        engine.per_attack_weights(count, tv=1e-6, anomaly=1e-6, anomaly_offset=meta["as_offset"]),
        np.asarray(jax.vmap(jax.random.key_data)(jax.random.split(jax.random.key(1), count))))

    def build(conv):
        v = make_victim(model, info.num_classes, info.image_shape, conv=conv)
        return make_objective(v, variables, info, weights=ObjectiveWeights(tv=1e-6, anomaly=1e-6, anomaly_offset=meta["as_offset"]),
                              reconstruct=lambda x: module.apply({"params": ae_params}, x))

    return info, build, inputs


def time_plan(eng: engine.Engine, plan: engine.Plan, inputs, steps: int) -> dict:
    """Compile `plan`, then time chunks of `steps` steps (best of 2 after a warm-up)."""
    start = time.perf_counter()
    program = eng.program(plan, inputs)
    compile_s = time.perf_counter() - start
    rate = eng.measure(program, inputs, steps, repeats=2)
    return {"compile_s": compile_s, "step_s": plan.wave_size / rate, "xla_peak_mib": program.bytes_per_device / 2**20}


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
        info, build, inputs = setup(model, max(args.attacks))
        eng = engine.Engine(build, attack.make_optimizer(0.1, 10_000, signed=False), info.bounds(), info.denormalize,
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
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
