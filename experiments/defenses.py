"""Which defense protects best at matched utility? Seed 002's "gradient pruning is the most effective
defense" against attackers that know the defense (issue 31).

    python experiments/defenses.py VARIANT [WORKDIR]      (default WORKDIR runs/defenses_VARIANT)

Stage 1, utility (its first seed runs first, then stage 2, then the other seeds; resumable per setting): the victim trained from its untrained init
with every FedSGD client gradient defended (gipip_jax.utility: one client a step, eval-mode victim,
SGD + momentum with a cosine schedule, crop + flip augmentation), for every setting of `sweep()`
and every seed; test accuracy, its drop from the undefended run of the same seed, mean ± sd over
seeds, and DP-SGD's ε (RDP accountant, δ 1e-5, q = batch / train images, all steps). Cached in
W/utility/utility.json; the table is W/utility.md.

The sweep: each defense family at 4 strengths, one field at a time against the undefended run:
Gaussian and Laplace noise (std 1e-3 .. 1e-1), magnitude pruning per tensor and global (0.5 ..
0.999), global-norm clipping (1 .. 1e-3), DP-SGD (clip 1, noise multiplier 0.01 .. 1), dropout on
the classifier input (0.25 .. 0.9) and Soteria (0.4 .. 0.99). Soteria's utility is not measured: its
per-batch Jacobian of the representation needs ~64 GB for a ConvNet batch of 64 (measured: out of
memory at 24 GiB).

Stage 2, leakage at batch size 1 (design fixed before its first attack): the untrained victim
(PyTorch's init, seed 0), CIFAR-10 TRAIN targets (batch numbers 0..15, the AE's auxiliary images
skipped: the targets of as_claim's convnet_bs1), given labels, Inverting Gradients (cosine + TV
1e-6, Adam 0.1 on the gradient's sign, step schedule, 1 restart). One study per family holds every
strength twice: the ignorant attack and the defense-aware one (grid `adaptive`, gipip_jax/adaptive.py;
clipping has no defense-aware arm: cosine matching is blind to a rescaling, so it would be the same
attack), plus the undefended study, and the undefended attack at half the budget (bs1_none_half).
Budget: 4,000 iterations. W/convergence.md pairs the undefended arm per target with as_claim's convnet_bs1 IG arm
(the same targets, keys and victim, unsigned Adam at 10,000 iterations) and with its own half budget.
Stage 3, batch size 4: per family the strength whose mean utility drop is nearest 2 points (Soteria:
0.8), both arms, 8 disjoint train batches of 4 with distinct labels, λ_TV 1e-5, 4,000 iterations;
convergence.md pairs its undefended arm with as_claim's convnet_bs4 IG arm (10,000 iterations).
Stage 4, threat models (amendment 2), undefended and outside the verdicts: FedAvg clients of one image
taking 5 local steps of lr 5e-2 (the utility training's rate), on the bs-1 targets, the attack
simulating the local steps (THREAT_ROWS, study bs1_fedavg_5_lr5e-2). Secure aggregation of 4
single-image FedSGD clients needs no study: the server sees the sum of their gradients, 4 x the mean
gradient of the batch of 4, and cosine matching is blind to that scale, so it is the bs-4 undefended
attack (bs4_none). W/threat_models.md holds both, the FedAvg row paired with bs1_none per target.

Amendment (2026-12-05, before any defended attack had finished): the first design ran unsigned Adam
(GI-PIP's recipe) for 2,000 iterations, 16 batches at bs 4. Its undefended bs-1 arm, the first 16
attacks, failed the convergence check: 19.43 dB mean against 24.28 at 10,000 iterations, paired
-4.85 dB [-6.92, -2.79], 6 of 16 targets at or above 20 dB. A pilot of the undefended arm on the same
16 targets (records in experiments/results/defenses/budget_pilot/) gave, against that reference:
signed Adam at 2,000 iterations 22.99 dB, -1.28 [-2.33, -0.31]; signed at 4,000, 24.01 dB, -0.27
[-1.08, +0.54], 14 of 16 at or above 20 dB. So the study attacks with Inverting Gradients' own signed
steps at 4,000 iterations; bs 4 takes 8 batches, which holds the rest near 23 CPU hours. The endpoint,
the families, the strengths, the targets at bs 1 and the analysis are unchanged.

Amendment 2 (2026-12-05, 124 of the bs-1 attacks recorded, none of stage 4): issue 31 asks to keep
FedAvg local steps and secure aggregation in the table, and the design had left them out; stage 4
adds them as descriptive rows after stage 3, so nothing before it changes. Budget: 16 x 4,000 =
64k attack-steps at the measured ~9 a second (5 local steps make an attack step ~9x FedSGD's), ~2 h.

Leakage per target is the PSNR of the suite's strongest reconstruction (gipip_jax/strongest.py): the
ignorant suite (the ignorant attack alone) and the full suite (ignorant + defense-aware), the latter
picked two ways: oracle-free (lowest defense-aware matching value, what a real attacker can compute)
and oracle (highest PSNR, an upper bound). Recognisable: PSNR >= 20 dB.

Primary endpoint (fixed before the first attack): at a budget of D = 2 points of test-accuracy drop,
each family at its strongest affordable setting (the largest mean drop <= D; a family whose weakest
setting costs more is not available at D), leakage under the full suite, oracle-free, at batch size
1. The least-leaking family is compared with every other one: paired ΔPSNR (other − least) over the
16 targets, 95 % percentile-bootstrap CI (10,000 resamples, seed 0) and Wilcoxon p with Holm's
correction over the comparisons. Seed 002's claim "pruning protects best at matched utility" holds at
D if a pruning family (per tensor or global) is the least leaking and every other family's CI lies
above 0; it is refuted if some family's CI lies below 0 against pruning; otherwise undecided. The
same is reported at D = 1 and 5 points and for the ignorant suite (does pruning stay best when the
attacker adapts?). Reports: W/leakage_bs1.md (+ .png plots), W/leakage_bs4.md, W/threat_models.md;
every attack's PSNR and oracle-free score beside them: W/scores_bs1.jsonl, W/scores_bs4.jsonl.

Variants:
  smoke  convnet_tiny at 16 px: utility 256 train images, 1 epoch, 2 seeds; attacks 2 targets (bs 4: 1
         batch), 10 iterations, 3 families at 1 strength, bs 4 for pruning only (tested in CI)
  cpu    ConvNet (PyTorch's init). Utility: 5,000 CIFAR-10 train images, 8 epochs (624 steps of 64),
         test accuracy on 5,000 test images, seeds 0 and 1, 29 settings: ~0.4 s a step (DP-SGD
         ~0.85), 5–12 min a setting, ~3.3 h a seed (measured). Attacks (budgeted at the measured
         ~82 attack-steps/s at bs 1 and ~24 at bs 4, vmap_patches x 4): bs 1, 1 + 60 arms x 16
         targets x 4,000 iterations + the half-budget arm = 3.94M attack-steps, ~13.3 h; bs 4, 1 + 15
         arms x 8 batches x 4,000 = 0.51M, ~6 h; stage 4, 64k FedAvg attack-steps at ~9 a second, ~2 h.
         With seed 1's utility, ~25 CPU hours from the amendment: a multi-session run; kill it at any
         time and rerun the same command to resume.
  full   ConvNet, utility on all 50,000 train images, 30 epochs, the 10,000 test images, seeds 0, 1
         and 2; attacks at 10,000 iterations, 64 targets (bs 4: 64 batches): one command for a GPU
         (not run yet)
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from gipip_jax import defenses, experiment, paired, strongest, study, utility
from gipip_jax.results import by_target, ok_records, read_records
from gipip_jax.workdir import write_text

UTILITY_CONFIG = "experiments/configs/utility_cifar10.py"
VERDICTS_FILE = "verdicts.json"   # the verdicts, machine-readable (published: experiments/results/defenses/)


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
NO_ADAPTIVE_ARM = ("clipping",)     # cosine matching is blind to a rescaling: the adaptive arm is the same attack
BS4_UNMEASURED_STRENGTH = {"soteria": {"soteria_pruning": 0.8}}   # its bs-4 setting without a utility number
# Stage 4 (amendment 2): undefended FedAvg clients at bs 1, 5 local steps at the utility training's learning
# rate; the attack simulates the protocol (it knows it). A descriptive row, not in the verdicts.
THREAT_ROWS = {"fedavg_5_lr5e-2": {"threat.kind": "fedavg", "threat.local_steps": 5, "threat.local_lr": 5e-2}}
BUDGETS = (1.0, 2.0, 5.0)           # points of test-accuracy drop the verdicts are read at
PRIMARY_BUDGET = 2.0
REFERENCE_AE = "experiments/checkpoints/ae_cifar10_aux5_reference"   # its auxiliary images are skipped as targets
HALF_BUDGET = "bs1_none_half"       # the undefended bs-1 attack at half the iterations (convergence.md)
LONG_RUNS = {1: "experiments/results/as_claim/convnet_bs1/results.jsonl",   # IG at 10,000 iterations, same
             4: "experiments/results/as_claim/convnet_bs4/results.jsonl"}   # victim, keys and targets

VARIANTS = {
    "smoke": dict(utility={"data.image_size": 16, "victim.name": "convnet_tiny", "victim.init": "torch",
                           "train_count": 256, "eval_count": 128, "epochs": 1, "batch_size": 32},
                  seeds=(0, 1), families=("none", "gaussian noise", "pruning per tensor", "soteria"),
                  strengths=1, bs4_families=("none", "pruning per tensor"),
                  attacks=dict(image_size=16, victim="convnet_tiny", targets=2, bs4_targets=1, iterations=10, lpips=None,
                               engine={"engine.strategy": "unroll", "engine.attacks_per_device": 2,
                                       "engine.chunk_size": 5, "engine.checkpoint_every": 5})),
    "cpu": dict(utility={}, utility_variant="defense_study",   # utility_cifar10.py:defense_study, audits use it too
                seeds=(0, 1), families=None, strengths=4,
                attacks=dict(image_size=None, victim="convnet", targets=16, bs4_targets=8, iterations=4_000, lpips="alexnet",
                             engine={"engine.strategy": "vmap_patches", "engine.attacks_per_device": 4,
                                     "engine.chunk_size": 50, "engine.checkpoint_every": 500})),
    "full": dict(utility={"victim.name": "convnet", "victim.init": "torch", "train_count": 50_000,
                          "eval_count": 10_000, "epochs": 30, "batch_size": 64, "learning_rate": 0.05},
                 seeds=(0, 1, 2), families=None, strengths=4,
                 attacks=dict(image_size=None, victim="convnet", targets=64, bs4_targets=64, iterations=10_000,
                              lpips="alexnet",
                              engine={"engine.chunk_size": 200, "engine.checkpoint_every": 2000})),
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


def run_utility(v: dict, workdir: str, seeds=None) -> dict[str, list[dict]]:
    """Trains (or reads from the cache) every measured setting for every seed of `seeds` (default:
    the variant's); writes W/utility.md. Returns {setting key: [record of each seed]} keyed by `defenses.describe`."""
    measured = [s for family, s in settings(v) if family not in UTILITY_UNMEASURED]
    folder = os.path.join(workdir, "utility")
    by_setting: dict[str, list[dict]] = {}
    for seed in seeds or v["seeds"]:
        variant = f":{v['utility_variant']}" if v.get("utility_variant") else ""
        config = experiment.configured(UTILITY_CONFIG + variant, {**v["utility"], "seed": seed})
        config.settings = measured
        print(f"== utility, seed {seed}: {len(measured)} settings", flush=True)
        for setting, record in zip(measured, utility.run(config, folder)):
            by_setting.setdefault(defenses.describe(setting), []).append(record)
    text = utility_table(v, by_setting)
    write_text(os.path.join(workdir, "utility.md"), text + "\n")
    print(text)
    return by_setting


def utility_table(v: dict, by_setting: dict[str, list[dict]]) -> str:
    """Markdown: per setting, test accuracy mean ± sd over seeds, the mean drop from the undefended
    run of the same seed (points), and DP-SGD's ε; "(diverged: seeds S)" marks seeds whose training loss
    ended non-finite (the accuracy is then that of the diverged model, kept as measured)."""
    base = {r["recipe"]["seed"]: r["eval_acc"] for r in by_setting["none"]}
    seeds = sorted({r["recipe"]["seed"] for r in by_setting["none"]})
    lines = [f"| family | defense | test acc (mean ± sd over seeds {seeds}) | drop (points) | DP ε (δ) |",
             "|---|---|---|---|---|"]
    for family, setting in settings(v):
        key = defenses.describe(setting)
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
        diverged = [r["recipe"]["seed"] for r in records if not np.isfinite(r.get("train_loss") or 0.0)]
        note = f" (diverged: seeds {diverged})" if diverged else ""
        lines.append(f"| {family} | {key} | {acc.mean():.3f}{sd}{note} | {drop.mean():+.1f}{drop_sd} | {eps_text} |")
    return "\n".join(lines)


def families(v: dict) -> dict[str, list[dict]]:
    """{family: its settings} of the variant, in sweep order ("none" first)."""
    out: dict[str, list[dict]] = {}
    for family, setting in settings(v):
        out.setdefault(family, []).append(setting)
    return out


def study_fields(v: dict, batch_size: int, tv: float) -> dict:
    a = v["attacks"]
    targets = a["targets"] if batch_size == 1 else a["bs4_targets"]
    return {"data.name": "cifar10", "data.split": "train", "data.image_size": a["image_size"],
            "targets.starts": list(range(targets)), "targets.batch_size": batch_size,
            "victim.name": a["victim"], "victim.init": "torch", "attack.iterations": a["iterations"],
            "attack.signed": True,
            "attack.restart_selection": "matching", "grid.tv_weight": [tv], "grid.as_weight": [0.0],
            "prior.checkpoint": REFERENCE_AE, "metrics.lpips_net": a["lpips"], **a["engine"]}


def run_bs1(v: dict, workdir: str) -> list[str]:
    """Stage 2: the bs-1 study of every family, run (or resumed) in W/studies; their names (the
    undefended one first), then the undefended attack at half the budget (study HALF_BUDGET)."""
    names = []
    for family, chosen in families(v).items():
        fields = {**study_fields(v, 1, 1e-6), **study.defense_grid(chosen),
                  "grid.adaptive": [False] if family in ("none", *NO_ADAPTIVE_ARM) else [False, True]}
        names.append(f"bs1_{slug(family)}")
        experiment.run_study(workdir, names[-1], fields)
    experiment.run_study(workdir, HALF_BUDGET, {**study_fields(v, 1, 1e-6), "grid.adaptive": [False],
                                                "attack.iterations": v["attacks"]["iterations"] // 2})
    return names


def run_bs4(v: dict, workdir: str, by_setting: dict[str, list[dict]]) -> list[str]:
    """Stage 3: per family its setting nearest PRIMARY_BUDGET points of drop, at bs 4; their names."""
    names = []
    for family, chosen in families(v).items():
        if family not in v.get("bs4_families", (family,)):
            continue
        pick = [bs4_setting(family, chosen, by_setting)]
        fields = {**study_fields(v, 4, 1e-5), **study.defense_grid(pick),
                  "grid.adaptive": [False] if family in ("none", *NO_ADAPTIVE_ARM) else [False, True]}
        names.append(f"bs4_{slug(family)}")
        experiment.run_study(workdir, names[-1], fields)
    return names


def run_threats(v: dict, workdir: str) -> list[str]:
    """Stage 4: one undefended bs-1 study per THREAT_ROWS entry, on the bs-1 targets; their names."""
    names = []
    for row, fields in THREAT_ROWS.items():
        names.append(f"bs1_{row}")
        experiment.run_study(workdir, names[-1], {**study_fields(v, 1, 1e-6), "grid.adaptive": [False], **fields})
    return names


def threat_table(workdir: str, names: list[str]) -> str:
    """W/threat_models.md: each stage-4 study's PSNR (mean [95 % CI] over its targets, recognisable
    count) and its paired difference from the undefended FedSGD attack (bs1_none) on the same targets;
    then secure aggregation, read off the bs-4 undefended study (see the module docstring)."""
    def study_of(name: str) -> dict[tuple, dict]:
        return by_target(experiment.study_records(workdir, name))

    fedsgd = study_of("bs1_none")
    lines = ["# Threat models, undefended: FedAvg local steps and secure aggregation", "",
             "Utility not measured (FedAvg changes the training protocol; secure aggregation leaves the sum "
             "exact). ΔPSNR against the undefended FedSGD attack on the same targets (bs1_none), 95 % "
             "percentile-bootstrap CI, Wilcoxon p.", "",
             "| study | client | PSNR, mean [95 % CI] | recognisable (≥ 20 dB) | ΔPSNR vs FedSGD | p |",
             "|---|---|---|---|---|---|"]
    for name in names:
        fields = THREAT_ROWS[name.removeprefix("bs1_")]
        rows = study_of(name)
        psnr = np.array([r["psnr"] for r in rows.values()])
        if not len(psnr):
            continue
        low, high = paired.bootstrap_mean_ci(psnr)
        st = paired.paired_stats(*paired.shared_targets(rows, fedsgd))
        lines.append(f"| {name} | FedAvg, {fields['threat.local_steps']} local steps of lr "
                     f"{fields['threat.local_lr']:g}, 1 image | {psnr.mean():.2f} [{float(low):.2f}, {float(high):.2f}] | "
                     f"{int((psnr >= strongest.RECOGNISABLE_PSNR).sum())} of {len(psnr)} | {paired.format_delta(st)} | "
                     f"{paired.format_p(st['p_value'])} |")
    bs4 = np.array([r["psnr"] for r in study_of("bs4_none").values()])
    if len(bs4):
        low, high = paired.bootstrap_mean_ci(bs4)
        lines += ["", f"Secure aggregation of 4 single-image FedSGD clients: the server sees the sum of their "
                      f"gradients, 4 x the mean gradient of the batch of 4, and cosine matching is blind to that "
                      f"scale, so it is the bs-4 undefended attack (bs4_none): {bs4.mean():.2f} dB "
                      f"[{float(low):.2f}, {float(high):.2f}] over {len(bs4)} batch{'es' * (len(bs4) != 1)}."]
    text = "\n".join(lines)
    write_text(os.path.join(workdir, "threat_models.md"), text + "\n")
    return text


def slug(family: str) -> str:
    return family.replace(" ", "_").replace("-", "_")


def mean_drop(setting: dict, by_setting: dict[str, list[dict]]) -> float | None:
    """Mean over seeds of the test-accuracy drop (points) from the undefended run of the same seed."""
    records = by_setting.get(defenses.describe(setting))
    if not records:
        return None
    base = {r["recipe"]["seed"]: r["eval_acc"] for r in by_setting["none"]}
    return float(np.mean([100 * (base[r["recipe"]["seed"]] - r["eval_acc"]) for r in records]))


def bs4_setting(family: str, chosen: list[dict], by_setting: dict[str, list[dict]]) -> dict:
    """The family's setting nearest PRIMARY_BUDGET points of mean drop (stage 3)."""
    if family in BS4_UNMEASURED_STRENGTH:
        return BS4_UNMEASURED_STRENGTH[family]
    return min(chosen, key=lambda s: abs(mean_drop(s, by_setting) - PRIMARY_BUDGET))


def analyse(v: dict, workdir: str, names: list[str], by_setting: dict[str, list[dict]], batch_size: int,
            plot: bool) -> str:
    """W/leakage_bsB.md (and the leakage-utility plot): per setting its utility and its leakage under the
    ignorant suite and the full suite (oracle-free and oracle), then the verdicts at BUDGETS. W/scores_bsB.jsonl
    holds every ok attack's PSNR and defense-aware matching value (the oracle-free criterion,
    strongest.rescore), one JSON line each, so that every pick and CI can be recomputed without JAX."""
    cells, picks_used, scored = {}, {"ignorant": {}, "oracle_free": {}, "oracle": {}}, []
    for name in names:
        study = experiment.study_dir(workdir, name)
        records = ok_records(study)
        scores = strongest.rescore(study, records)
        picks = strongest.strongest(records, scores)
        scored += [{"study": name, "attack_id": r["attack_id"], "target_indices": r["target_indices"],
                    "defense": defenses.describe(r["setting"]), "adaptive": bool(r["setting"].get("adaptive")),
                    "psnr": r["psnr"], "aware_matching": scores.get(r["attack_id"])} for r in records]
        ignorant = strongest.strongest([r for r in records if not r["setting"].get("adaptive")], {})["oracle"]
        for suite, chosen in (("ignorant", ignorant), ("oracle_free", picks["oracle_free"]), ("oracle", picks["oracle"])):
            picks_used[suite].update(chosen)
        for r in records:
            cells.setdefault(strongest.defense_key(r["setting"]), name)
    suites = {suite: strongest.leakage(chosen) for suite, chosen in picks_used.items()}
    rows = ["| study | defense | utility drop (points, mean over seeds) | ignorant IG: PSNR [95 % CI] | "
            "strongest, oracle-free: PSNR [95 % CI] | knowing the defense: oracle-free − ignorant, ΔPSNR [95 % CI] | "
            "recognisable (≥ 20 dB) | defense-aware picked | strongest, oracle: PSNR |", "|---|---|---|---|---|---|---|---|---|"]
    points = {}
    write_text(os.path.join(workdir, f"scores_bs{batch_size}.jsonl"), "".join(json.dumps(row) + "\n" for row in scored))
    for key, study_name in cells.items():
        setting = {f: x for f, x in json.loads(key).items() if x != defenses.DEFENSE_DEFAULTS[f]}
        drop = mean_drop(setting, by_setting)
        row = [study_name, defenses.describe(setting), "not measured" if drop is None else f"{drop:+.1f}"]
        for suite in ("ignorant", "oracle_free"):
            psnr = suites[suite][key]["psnr"]
            low, high = paired.bootstrap_mean_ci(psnr)
            row.append(f"{psnr.mean():.2f} [{float(low):.2f}, {float(high):.2f}]")
            points[(suite, key)] = (drop, psnr)
        free, ignorant = suites["oracle_free"][key], suites["ignorant"][key]
        assert free["targets"] == ignorant["targets"], f"{study_name}: the suites attack other targets"
        row += [paired.format_delta(paired.paired_stats(free["psnr"], ignorant["psnr"])),
                f"{free['recognisable']:.0%} of {len(free['psnr'])}", f"{free['adaptive']:.0%}",
                f"{suites['oracle'][key]['psnr'].mean():.2f}"]
        rows.append("| " + " | ".join(row) + " |")
    text = [f"# Leakage at batch size {batch_size}: every defense setting under the ignorant and the strongest attack",
            "", "\n".join(rows), ""]
    if plot:
        lines, found = verdicts(v, points, by_setting)
        text += lines
        write_text(os.path.join(workdir, VERDICTS_FILE), json.dumps(found, indent=2))
        plot_path = os.path.join(workdir, f"leakage_utility_bs{batch_size}.png")
        if leakage_plot(v, points, plot_path):
            left_off = [f for f in families(v) if f in UTILITY_UNMEASURED]
            text += ["", f"![leakage vs utility]({os.path.basename(plot_path)})"]
            if left_off:
                text.append(f"Not drawn, having no utility number (their leakage is in the table): {', '.join(left_off)}.")
    path = os.path.join(workdir, f"leakage_bs{batch_size}.md")
    write_text(path, "\n".join(text) + "\n")
    return path


def affordable(v: dict, budget: float, by_setting) -> dict[str, dict]:
    """{family: its strongest affordable setting at `budget` points}: the largest mean drop <= budget."""
    out = {}
    for family, chosen in families(v).items():
        if family == "none" or family in UTILITY_UNMEASURED:
            continue
        within = [(mean_drop(s, by_setting), s) for s in chosen]
        within = [(d, s) for d, s in within if d is not None and d <= budget]
        if within:
            out[family] = max(within, key=lambda pair: pair[0])[1]
    return out


def verdicts(v: dict, points: dict, by_setting) -> tuple[list[str], list[dict]]:
    """At each budget and suite: the least-leaking family against every other one, paired over targets.
    Returns the report's lines and, per budget and suite, {"budget", "suite", "least": family,
    "setting": its flat defense setting, "psnr": its mean, "pruning_best": seed 002's claim} (what
    W/verdicts.json holds, and `gipip-jax audit` reads from the published copy)."""
    found = []
    lines = ["## Which defense leaks least at matched utility?", "",
             "Per family its strongest affordable setting (largest mean drop ≤ budget). ΔPSNR = other − least "
             "leaking, per target; 95 % percentile-bootstrap CI (10,000 resamples, seed 0); Wilcoxon p, Holm over "
             "the comparisons of a row. Primary endpoint: budget 2 points, strongest suite, oracle-free.", ""]
    for budget in BUDGETS:
        chosen = affordable(v, budget, by_setting)
        for suite in ("oracle_free", "ignorant"):
            leak = {family: points[(suite, strongest.defense_key(s))][1]
                    for family, s in chosen.items()}
            if len(leak) < 2:
                lines.append(f"- {budget:g} point(s), {suite}: fewer than 2 families affordable ({sorted(leak)})")
                continue
            least = min(leak, key=lambda family: leak[family].mean())
            others = [f for f in leak if f != least]
            stats = [paired.paired_stats(leak[f], leak[least]) for f in others]
            adjusted = paired.holm([st["p_value"] for st in stats])
            parts = [f"{f} ({defenses.describe(chosen[f])}) {st['mean']:+.2f} dB [{st['ci_low']:+.2f}, {st['ci_high']:+.2f}] "
                     f"p {p:.2g}" for f, st, p in zip(others, stats, adjusted)]
            claim = pruning_claim(least, {f: {**st, "p_holm": p} for f, st, p in zip(others, stats, adjusted)})
            lines.append(f"- **{budget:g} point(s), {suite.replace('_', '-')}**: least leaking {least} "
                         f"({defenses.describe(chosen[least])}, {leak[least].mean():.2f} dB); others: " + "; ".join(parts)
                         + f". Pruning best: {claim}.")
            found.append({"budget": budget, "suite": suite, "least": least, "setting": chosen[least],
                          "psnr": float(leak[least].mean()), "pruning_best": claim})
    return lines, found


def pruning_claim(least: str, against_least: dict[str, dict]) -> str:
    """Seed 002's claim at one budget, from the paired stats of each family against the least leaking
    one (with "p_holm"): "holds" if pruning leaks least and every non-pruning family leaks more beyond
    noise (CI above 0 and Holm p < 0.05); "refuted" if another family leaks less than every pruning
    family beyond noise; else "undecided" (or "pruning not affordable")."""
    def beyond_noise(st):
        return st["ci_low"] > 0 and st["p_holm"] < paired.SIGNIFICANCE

    pruning = [f for f in against_least if f.startswith("pruning")]
    if least.startswith("pruning"):
        rest = [st for f, st in against_least.items() if not f.startswith("pruning")]
        return "holds" if all(beyond_noise(st) for st in rest) else "undecided"
    if not pruning:
        return "pruning not affordable"
    return "refuted" if all(beyond_noise(against_least[f]) for f in pruning) else "undecided"


def strength_label(setting: dict, family_settings: list[dict]) -> str:
    """The value(s) of `setting` in the field(s) its family sweeps ("0.001"; "" for a family of one setting)."""
    swept = [f for f in setting if len({repr(s.get(f)) for s in family_settings}) > 1]
    return ", ".join(f"{setting[f]:g}" if isinstance(setting[f], float) else str(setting[f]) for f in swept)


def leakage_plot(v: dict, points: dict, path: str) -> bool:
    """Mean PSNR (95 % CI bars) against mean utility drop, one curve per family in the order of its
    strengths (each point labelled with its strength), a panel per suite."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120, sharey=True)
    drawn = False
    for ax, suite in zip(axes, ("ignorant", "oracle_free")):
        for family, chosen in families(v).items():
            xy = [(*points[(suite, strongest.defense_key(s))], strength_label(s, chosen)) for s in chosen]
            xy = [(d, p, label) for d, p, label in xy if d is not None]
            if not xy:
                continue
            means = [p.mean() for _, p, _ in xy]
            cis = [paired.bootstrap_mean_ci(p) for _, p, _ in xy]
            err = np.array([[m - float(lo), float(hi) - m] for m, (lo, hi) in zip(means, cis)]).T
            bars = ax.errorbar([d for d, _, _ in xy], means, yerr=np.nan_to_num(err), marker="o", capsize=3, label=family)
            for (d, _, label), m in zip(xy, means):
                ax.annotate(label, (d, m), xytext=(4, 3), textcoords="offset points", fontsize=6,
                            color=bars.lines[0].get_color())
            drawn = True
        ax.axhline(strongest.RECOGNISABLE_PSNR, color="gray", ls=":", lw=1)
        ax.set_title("ignorant attack" if suite == "ignorant" else "strongest of the suite (oracle-free)")
        ax.set_xlabel("test-accuracy drop (points)")
    axes[0].set_ylabel("PSNR of the reconstruction (dB)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    if drawn:
        fig.savefig(path)
    plt.close(fig)
    return drawn


def convergence(v: dict, workdir: str, names: dict[int, list[str]]) -> str:
    """W/convergence.md: the undefended arm of each batch size paired per target with as_claim's IG arm
    at 10,000 iterations (LONG_RUNS: the same victim, keys and targets; ConvNet variants only), and the
    bs-1 one with its own half budget (experiment.write_convergence)."""
    undefended = {b: by_target(experiment.study_records(workdir, studies[0])) for b, studies in names.items()}
    pairs = [(f"bs {b}, this budget vs 10,000 iterations ({LONG_RUNS[b]})", undefended[b],
              by_target(read_records(LONG_RUNS[b]), lambda r: not r["setting"]["as_weight"]))
             for b in names if v["attacks"]["victim"] == "convnet"]
    pairs.append(("bs 1, this budget vs half of it", undefended[1], by_target(experiment.study_records(workdir, HALF_BUDGET))))
    return experiment.write_convergence(os.path.join(workdir, "convergence.md"), pairs)


def run(name: str, workdir: str) -> dict:
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    run_utility(v, workdir, seeds=v["seeds"][:1])   # the first seed, then the bs-1 attacks (they need no utility)
    names = {1: run_bs1(v, workdir)}
    by_setting = run_utility(v, workdir)
    names[4] = run_bs4(v, workdir, by_setting)
    threats = run_threats(v, workdir)
    out = {"utility": os.path.join(workdir, "utility.md"),
           "leakage": [analyse(v, workdir, names[b], by_setting, b, plot=b == 1) for b in (1, 4)]}
    print(threat_table(workdir, threats))
    print(convergence(v, workdir, names))
    return out


if __name__ == "__main__":
    sys.exit(experiment.main(run, __doc__, "defenses", sys.argv[1:]))
