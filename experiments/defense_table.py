"""Markdown defense table: attack quality under each defense next to its utility cost.

    python experiments/defense_table.py WORKROOT UTILITY_JSON

WORKROOT holds the study directories that experiments/defenses_cifar10.sh writes (STUDIES); UTILITY_JSON is the `gipip-jax utility` cache of the same settings. Rows: one per defense
setting; cells: mean over targets of the best restart per target (PSNR dB / SSIM), test accuracy and
its drop from the undefended setting, and DP-SGD's ε.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from gipip_jax.defenses import DEFENSE_DEFAULTS
from gipip_jax.results import read_records, records_path
from gipip_jax.summarize import best_restarts

STUDIES = ("noise", "prune", "dp_sgd", "clip", "laplace", "dropout", "soteria")


def changed(defense: dict) -> tuple:
    """The fields of a defense setting that differ from 'off', as a sorted tuple."""
    return tuple(sorted((f, v) for f, v in defense.items() if f in DEFENSE_DEFAULTS and v != DEFENSE_DEFAULTS[f]))


def table(root: str, utility_path: str) -> str:
    utility = {changed(json.loads(key)["defense"]): r for key, r in json.load(open(utility_path)).items()}
    if () not in utility:
        raise ValueError(f"{utility_path} has no undefended setting to measure the utility drop from")
    cells: dict[tuple, dict[str, list]] = {}
    for study in STUDIES:
        for r in best_restarts(read_records(records_path(f"{root}/{study}"))):  # [] if not run
            if r.get("status") == "ok":
                attack = "gipip" if r["setting"]["as_weight"] > 0 else "ig"
                cells.setdefault(changed(r["setting"]), {}).setdefault(attack, []).append((r["psnr"], r["ssim"]))
    base = utility[()]["eval_acc"]
    lines = ["| defense | test acc (drop) | IG PSNR / SSIM | GI-PIP PSNR / SSIM |", "|---|---|---|---|"]
    for setting in sorted(cells, key=lambda c: (len(c), c)):
        name = ", ".join(f"{f} {v}" for f, v in setting) or "none"
        u = utility.get(setting)
        if u and u.get("dp_epsilon") is not None:
            name += f" (ε {u['dp_epsilon']:.3g} at δ {u['dp_delta']:g})"
        acc = f"{u['eval_acc']:.3f} ({base - u['eval_acc']:+.3f})" if u else "not measured"
        quality = []
        for attack in ("ig", "gipip"):
            v = np.array(cells[setting].get(attack, [(np.nan, np.nan)]))
            quality.append(f"{v[:, 0].mean():.2f} / {v[:, 1].mean():.3f}")
        lines.append(f"| {name} | {acc} | {quality[0]} | {quality[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(table(sys.argv[1], sys.argv[2]))
