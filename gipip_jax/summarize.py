"""Summarize results.jsonl files into a markdown table: one row per attack setting.

    gipip-jax summarize runs/*/results.jsonl
    python -m gipip_jax.summarize runs/*/results.jsonl

Rows group records by (attack, model, batch size, iterations, λ_TV, λ_AS); cells are mean ± std
over the group's attacks (per-attack values are already means over the batch's images).
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

import numpy as np

from gipip_jax.results import read_records

METRICS = ("psnr", "ssim", "ssim_best_match", "lpips", "seconds")


def setting(record: dict) -> tuple:
    a = record["config"]["attack"]
    return (record["attack"], record["model"], record["batch_size"], record["iterations"],
            a.get("tv_weight"), a.get("as_weight"))


def table(records: list[dict]) -> str:
    """Markdown table of mean ± std per setting (failed attacks counted, not averaged)."""
    groups = defaultdict(list)
    for r in records:
        groups[setting(r)].append(r)
    header = ["attack", "model", "bs", "iterations", "λ_TV", "λ_AS", "n ok / n", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, group in groups.items():
        ok = [r for r in group if r.get("status") == "ok"]
        cells = [str(v) for v in key] + [f"{len(ok)} / {len(group)}"]
        for m in METRICS:
            values = np.array([r[m] for r in ok if m in r], float)
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: gipip-jax summarize RESULTS.jsonl [...]", file=sys.stderr)
        return 2
    records = []
    for path in paths:
        if not os.path.isfile(path):
            print(f"gipip-jax: error: {path} does not exist", file=sys.stderr)
            return 2
        found = read_records(path)
        if not found:
            print(f"gipip-jax: error: {path} holds no records", file=sys.stderr)
            return 2
        records += found
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
