"""Summarize results.jsonl files into a markdown table: one row per attack setting.

    gipip-jax summarize runs/*/results.jsonl
    python -m gipip_jax.summarize runs/*/results.jsonl

Rows group records by (attack, model, batch size, iterations, λ_TV, λ_AS, other settings such as
a defense's, from a study record's `setting_label`); cells are mean ± std
over the group's targets (per-attack values are already means over the batch's images). Study
records with several restarts count once per target: the restart with the lowest final objective.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict

import numpy as np

from gipip_jax.results import read_records

METRICS = ("psnr", "ssim", "ssim_best_match", "lpips", "label_accuracy", "seconds")


def setting(record: dict) -> tuple:
    a = record.get("setting") or record["config"]["attack"]
    return (record["attack"], record["model"], record["batch_size"], record["iterations"],
            a.get("tv_weight"), a.get("as_weight"), record.get("setting_label", ""))


def best_restarts(records: list[dict]) -> list[dict]:
    """One record per (setting, target): the ok restart with the lowest loss, else any failed one."""
    best = {}
    for r in records:
        key = (setting(r), tuple(r["target_indices"]))
        old = best.get(key)
        if old is None or (r.get("status") == "ok" and (old.get("status") != "ok" or r["loss"] < old["loss"])):
            best[key] = r
    return list(best.values())


def table(records: list[dict]) -> str:
    """Markdown table of mean ± std per setting (failed attacks counted, not averaged)."""
    groups = defaultdict(list)
    for r in best_restarts(records):
        groups[setting(r)].append(r)
    header = ["attack", "model", "bs", "iterations", "λ_TV", "λ_AS", "other settings", "n ok / n", *METRICS]
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
