"""Where an attack step's time goes: XLA's own trace of the GI-PIP objective's value-and-gradient.

    python benchmarks/profile_step.py --model convnet --side 64 --batch 4

Builds the benchmark workload of step_benchmark.py (untrained victim, the shipped AE, GI-PIP's
weights, a real CIFAR-10 target update), traces `--steps` calls of the jitted value-and-gradient of
the objective w.r.t. the pixels with `jax.profiler.trace`, reads the XPlane the trace wrote
(TensorFlow's `xplane_pb2`; tensorflow-cpu is installed for tfds) and prints, per step, the wall
time and the time spent in each kind of XLA op (thunk names without their numeric suffix, e.g.
`ynn_fusion` = YNNPACK dot fusions, `concatenate`, `add_bitcast_fusion`), summed over the XLA
worker threads, largest first.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import tempfile
import time

import jax
import numpy as np

from engine_throughput import one_attack, setup


def op_times(trace_dir: str, steps: int) -> collections.Counter:
    """ms per step spent in each kind of XLA op, from the XPlane in `trace_dir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise SystemExit(f"profile_step: error: the trace wrote no .xplane.pb under {trace_dir}")
    space = xplane_pb2.XSpace()
    with open(paths[0], "rb") as f:
        space.ParseFromString(f.read())
    kinds = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # XLA's worker threads (not the Python or client threads)
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if not name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                    kinds[name.split(".")[0]] += event.duration_ps / 1e9 / steps
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--conv", default="patch_grad", choices=["native", "patch_grad"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    work = setup(args.model, 1, args.side, args.batch)
    objective = work.build(args.conv)
    grads, labels, _ = one_attack(work)
    x = jax.random.normal(jax.random.key(3), work.x01.shape[1:])
    step = jax.jit(jax.value_and_grad(lambda x: objective(x, grads, labels, work.terms)[0]))
    jax.block_until_ready(step(x))
    walls = []
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.steps):
                start = time.perf_counter()
                jax.block_until_ready(step(x))
                walls.append(time.perf_counter() - start)
        kinds = op_times(trace_dir, args.steps)
    print(f"{args.model} {args.side} px bs {args.batch} ({args.conv} convs): {1e3 * np.median(walls):.1f} ms per "
          f"step (median of {args.steps}, traced); op time summed over XLA threads {sum(kinds.values()):.1f} ms")
    for kind, ms in kinds.most_common(args.top):
        print(f"  {ms:8.2f} ms  {kind}")


if __name__ == "__main__":
    main()
