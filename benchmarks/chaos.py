"""How much of a reconstruction's PSNR is float rounding? The same attacks at several engine widths.

    python benchmarks/chaos.py --workdir runs/chaos --iterations 1000 10000 --widths 1 2 4 --targets 16 \\
        --out benchmarks/results/chaos.json

Inverting Gradients as the study config runs it (experiments/configs/study_cifar10.py: untrained
ConvNet, Flax init, seed 0, CIFAR-10 test images with distinct labels, bs 1, cosine + TV 1e-6, Adam
0.1, step schedule) on the same targets with the same keys, once per (iterations, width): the engine's
vmap_patches strategy with `width` attacks per device, a fixed plan. Widths change only how XLA fuses
and orders the float operations (at a fixed width the numbers are bit-identical whatever the
neighbours: tests/test_plans.py), so the per-target spread across widths is the attack's sensitivity
to rounding: the noise floor under any paired difference between two runs that are not bit-identical.

Reported per iteration budget: per-target |ΔPSNR| over every pair of widths (median, mean, 90th
percentile, max), the mean PSNR per width (what a study reports) and the largest difference between
those means; the per-target PSNRs are in the JSON and printed as a markdown table. Each (iterations,
width) is a study under WORKDIR/studies/, so a rerun resumes.
`--set KEY=VALUE` changes a study field (e.g. victim.name=convnet_tiny for a quick check).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time

import numpy as np

from gipip_jax import configs, experiment
from gipip_jax.results import read_records
from gipip_jax.workdir import write_text


def study_name(iterations: int, width: int) -> str:
    return f"it{iterations}_w{width}"


def fields(iterations: int, width: int, targets: int, overrides: list[str]) -> dict:
    out = {"targets.starts": list(range(targets)), "attack.iterations": iterations, "grid.as_weight": [0.0],
           "engine.strategy": "vmap_patches", "engine.attacks_per_device": width, "metrics.lpips_net": None}
    for assignment in overrides:
        key, _, text = assignment.partition("=")
        out[key] = configs.parse_value(text)
    return out


def spread(psnr_by_width: dict[int, dict[tuple, float]]) -> dict:
    """Per-target |ΔPSNR| over every pair of widths, and the per-width means, over the targets all have."""
    common = sorted(set.intersection(*(set(v) for v in psnr_by_width.values())))
    if not common:
        raise ValueError("no target has an ok attack at every width: nothing to compare")
    differences = np.asarray([abs(psnr_by_width[a][t] - psnr_by_width[b][t])
                              for a, b in itertools.combinations(sorted(psnr_by_width), 2) for t in common])
    means = {w: float(np.mean([v[t] for t in common])) for w, v in psnr_by_width.items()}
    return {"targets": len(common), "pairs": len(differences),
            "psnr": {str(w): {",".join(map(str, t)): v[t] for t in common} for w, v in sorted(psnr_by_width.items())},
            "abs_delta_psnr": {"median": float(np.median(differences)), "mean": float(differences.mean()),
                               "p90": float(np.percentile(differences, 90)), "max": float(differences.max())},
            "mean_psnr_by_width": {str(w): m for w, m in means.items()},
            "largest_mean_difference": float(max(means.values()) - min(means.values()))}


def table(budget: dict) -> str:
    """A budget's per-target PSNR (dB) by width as a markdown table: one row per target (its range across
    widths last), then the means."""
    widths = list(budget["psnr"])
    rows = ["| target | " + " | ".join(f"width {w}" for w in widths) + " | range |",
            "|---" * (len(widths) + 2) + "|"]
    for target in budget["psnr"][widths[0]]:
        values = [budget["psnr"][w][target] for w in widths]
        rows.append(f"| {target} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {max(values) - min(values):.2f} |")
    means = [budget["mean_psnr_by_width"][w] for w in widths]
    rows.append("| mean | " + " | ".join(f"{m:.2f}" for m in means) + f" | {max(means) - min(means):.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--iterations", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--targets", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="JSON of the result (default WORKDIR/chaos.json)")
    args = parser.parse_args(argv)
    if len(args.widths) < 2 or min(args.widths) < 1 or args.targets < 1 or min(args.iterations) < 1:
        parser.error("need at least two widths >= 1, targets >= 1 and iterations >= 1")
    result = {"command": "python benchmarks/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
              "budgets": {}}
    for iterations in args.iterations:
        psnr = {}
        for width in args.widths:
            name = study_name(iterations, width)
            experiment.run_study(args.workdir, name, fields(iterations, width, args.targets, args.set))
            records = read_records(os.path.join(args.workdir, "studies", name, "results.jsonl"))
            psnr[width] = {tuple(r["target_indices"]): r["psnr"] for r in records if r.get("status") == "ok"}
        result["budgets"][str(iterations)] = spread(psnr)
        s = result["budgets"][str(iterations)]
        print(f"{iterations} iterations, widths {args.widths}, {s['targets']} targets: per-target |ΔPSNR| median "
              f"{s['abs_delta_psnr']['median']:.2f} dB, 90th percentile {s['abs_delta_psnr']['p90']:.2f}, max "
              f"{s['abs_delta_psnr']['max']:.2f}; mean PSNR by width "
              + ", ".join(f"{w}: {m:.2f}" for w, m in s["mean_psnr_by_width"].items()), flush=True)
        print(table(s), flush=True)
    out = args.out or os.path.join(args.workdir, "chaos.json")
    write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def run(argv: list[str] | None = None) -> int:
    """main, with bad input (a config field, data, a plan) as one line and exit status 2."""
    from gipip_jax import cli

    try:
        return main(argv)
    except cli.input_errors() as error:
        return cli.fail(error)


if __name__ == "__main__":
    sys.exit(run())
