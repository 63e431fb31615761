"""Which defense protects best at matched utility? Seed 002's "gradient pruning is the most effective
defense" against attackers that know the defense (issue 31).

    python experiments/defenses.py VARIANT [WORKDIR]      (default WORKDIR runs/defenses_VARIANT)

Stage 1, utility (done first; resumable per setting): the victim trained from its untrained init
with every FedSGD client gradient defended (gipip_jax.utility: one client a step, eval-mode victim,
SGD + momentum with a cosine schedule, crop + flip augmentation), for every setting of `sweep()`
and every seed; test accuracy, its drop from the undefended run of the same seed, mean ± sd over
seeds, and DP-SGD's ε (RDP accountant, δ 1e-5, q = batch / train images, all steps). Cached in
W/utility/utility.json; the table is W/utility.md.

The sweep: each defense family at 4 strengths, one field at a time against the undefended run:
Gaussian and Laplace noise (std 1e-3 .. 1e-1), magnitude pruning per tensor and global (0.5 ..
0.999), global-norm clipping (1 .. 1e-3), DP-SGD (clip 1, noise multiplier 0.01 .. 1) and dropout
on the classifier input (0.25 .. 0.9). Soteria (0.4 .. 0.99) is in the attack sweep only: its
per-batch Jacobian of the representation needs ~64 GB for a ConvNet batch of 64 (measured: out of
memory at 24 GiB), so its utility is not measured.

Variants:
  smoke  convnet_tiny at 16 px, 256 train images, 1 epoch, 2 seeds, 4 settings (~1 min; tested in CI)
  cpu    ConvNet (PyTorch's init), 5,000 CIFAR-10 train images, 8 epochs (624 steps of 64), test
         accuracy on 5,000 test images, seeds 0 and 1, the whole sweep (29 settings). Measured on the
         2-core CPU: ~0.4 s a step (DP-SGD ~0.85: per-example gradients), ~5–6 min a setting, ~3 h a
         seed, ~6 h in all: a multi-session run; kill it at any time and rerun the same command.
  full   ConvNet, all 50,000 train images, 30 epochs, the 10,000 test images, seeds 0, 1 and 2: one
         command for a GPU (not run yet: no GPU lent)
"""

from __future__ import annotations

import os
import sys

import numpy as np

from gipip_jax import defenses, experiment, utility

UTILITY_CONFIG = "experiments/configs/utility_cifar10.py"


def sweep() -> list[tuple[str, dict]]:
    """(family, flat defense setting) of the study, the undefended run first."""
    out = [("none", {})]
    out += [("gaussian noise", {"noise_std": s}) for s in (1e-3, 1e-2, 3e-2, 1e-1)]
    out += [("laplace noise", {"noise": "laplace", "noise_std": s}) for s in (1e-3, 1e-2, 3e-2, 1e-1)]
    out += [("pruning per tensor", {"prune_sparsity": p}) for p in (0.5, 0.9, 0.99, 0.999)]
    out += [("pruning global", {"prune_sparsity": p, "prune_scope": "global"}) for p in (0.5, 0.9, 0.99, 0.999)]
    out += [("clipping", {"clip_norm": c}) for c in (1.0, 0.1, 0.01, 0.001)]
    out += [("dp-sgd", {"dp_clip_norm": 1.0, "dp_noise_multiplier": z}) for z in (0.01, 0.1, 0.3, 1.0)]
    out += [("dropout", {"dropout_rate": r}) for r in (0.25, 0.5, 0.75, 0.9)]
    out += [("soteria", {"soteria_pruning": p}) for p in (0.4, 0.8, 0.95, 0.99)]
    return out


UTILITY_UNMEASURED = ("soteria",)   # see the module docstring

VARIANTS = {
    "smoke": dict(utility={"data.image_size": 16, "victim.name": "convnet_tiny", "victim.init": "torch",
                           "train_count": 256, "eval_count": 128, "epochs": 1, "batch_size": 32},
                  seeds=(0, 1), families=("none", "gaussian noise", "pruning per tensor", "dp-sgd"), strengths=1),
    "cpu": dict(utility={"victim.name": "convnet", "victim.init": "torch", "train_count": 5_000,
                         "eval_count": 5_000, "epochs": 8, "batch_size": 64, "learning_rate": 0.05},
                seeds=(0, 1), families=None, strengths=4),
    "full": dict(utility={"victim.name": "convnet", "victim.init": "torch", "train_count": 50_000,
                          "eval_count": 10_000, "epochs": 30, "batch_size": 64, "learning_rate": 0.05},
                 seeds=(0, 1, 2), families=None, strengths=4),
}


def settings(v: dict) -> list[tuple[str, dict]]:
    """The variant's part of `sweep()`: its families (None: all), the first `strengths` of each."""
    chosen, seen = [], {}
    for family, setting in sweep():
        if v["families"] is not None and family not in v["families"]:
            continue
        seen[family] = seen.get(family, 0) + 1
        if seen[family] <= v["strengths"] or family == "none":
            chosen.append((family, setting))
    return chosen


def run_utility(v: dict, workdir: str) -> dict[str, list[dict]]:
    """Trains (or reads from the cache) every measured setting for every seed; writes W/utility.md.
    Returns {setting key: [record of each seed]} keyed by `defense_key`."""
    measured = [s for family, s in settings(v) if family not in UTILITY_UNMEASURED]
    folder = os.path.join(workdir, "utility")
    by_setting: dict[str, list[dict]] = {}
    for seed in v["seeds"]:
        config = experiment.configured(UTILITY_CONFIG, {**v["utility"], "seed": seed})
        config.settings = measured
        print(f"== utility, seed {seed}: {len(measured)} settings", flush=True)
        for setting, record in zip(measured, utility.run(config, folder)):
            by_setting.setdefault(defense_key(setting), []).append(record)
    text = utility_table(v, by_setting)
    with open(os.path.join(workdir, "utility.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return by_setting


def defense_key(setting: dict) -> str:
    """The setting's non-default fields as text, e.g. "noise_std=0.01" ("none" when undefended)."""
    full = defenses.parse(setting).fields
    changed = [f"{f}={full[f]}" for f in defenses.DEFENSE_DEFAULTS if full[f] != defenses.DEFENSE_DEFAULTS[f]]
    return ", ".join(changed) or "none"


def utility_table(v: dict, by_setting: dict[str, list[dict]]) -> str:
    """Markdown: per setting, test accuracy mean ± sd over seeds, the mean drop from the undefended
    run of the same seed (points), and DP-SGD's ε."""
    base = {r["recipe"]["seed"]: r["eval_acc"] for r in by_setting["none"]}
    lines = [f"| family | defense | test acc (mean ± sd over seeds {list(v['seeds'])}) | drop (points) | DP ε (δ) |",
             "|---|---|---|---|---|"]
    for family, setting in settings(v):
        key = defense_key(setting)
        if family in UTILITY_UNMEASURED:
            lines.append(f"| {family} | {key} | not measured | – | – |")
            continue
        records = by_setting[key]
        acc = np.array([r["eval_acc"] for r in records])
        drop = np.array([base[r["recipe"]["seed"]] - r["eval_acc"] for r in records]) * 100
        sd = f" ± {acc.std(ddof=1):.3f}" if len(acc) > 1 else ""
        drop_sd = f" ± {drop.std(ddof=1):.1f}" if len(drop) > 1 else ""
        eps = records[0].get("dp_epsilon")
        eps_text = "–" if eps is None else f"{eps:.3g} ({records[0]['dp_delta']:g})"
        lines.append(f"| {family} | {key} | {acc.mean():.3f}{sd} | {drop.mean():+.1f}{drop_sd} | {eps_text} |")
    return "\n".join(lines)


def run(name: str, workdir: str) -> dict:
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    return {"utility": run_utility(v, workdir)}


if __name__ == "__main__":
    sys.exit(experiment.main(run, __doc__, "defenses", sys.argv[1:]))
