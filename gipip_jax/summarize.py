"""Summarize results.jsonl files into a markdown table: one row per attack arm.

    gipip-jax summarize runs/*/results.jsonl
    python -m gipip_jax.summarize runs/*/results.jsonl

An *arm* is an attack setting: a study record's whole `setting` (every grid field: λ_TV, λ_AS, the
AE offset c, λ_BN, λ_feat, the defense fields), an `attack`-command record's λ_TV, λ_AS and c. Rows
group records by (attack, model, batch size, iterations, arm); cells are mean ± std over the arm's
targets (per-attack values are already means over the batch's images). Study records with several
restarts count once per target: the restart `config.attack.restart_selection` picks ("matching",
the default: the lowest gradient-matching term, as the GI-PIP authors rank restarts; "objective":
the lowest final objective).

Each arm with λ_AS > 0 is paired per target with its baseline, the arm with λ_AS = 0 and otherwise
the same setting (any c): mean difference with its 95 % bootstrap CI, median, targets better/worse
and the two-sided Wilcoxon signed-rank p, for PSNR and the authors' zero-padded SSIM (`ssim_padded`;
records that predate it fall back to dm-pix `ssim`, marked †). "PSNR < 15 dB" is the failure rate.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

import numpy as np

from gipip_jax.paired import adjust_family, failure_rate, format_delta, format_tested, paired_stats, verdict
from gipip_jax.results import read_records, warn_duplicates

METRICS = ("psnr", "ssim", "ssim_padded", "ssim_best_match", "lpips", "label_accuracy", "seconds")
HEADERS = {"ssim": "ssim (dm-pix)", "ssim_padded": "ssim_padded (authors')"}
FAILURE_PSNR = 15.0   # dB: a target reconstructed below it counts as a failed attack
LABELLED = ("tv_weight", "as_weight")   # arm fields shown in their own columns


def arm(record: dict) -> dict:
    """The record's attack setting: a study record's `setting`, else λ_TV, λ_AS and c of an attack record."""
    if record.get("setting") is not None:
        return record["setting"]
    a = record["config"]["attack"]
    return {"tv_weight": a.get("tv_weight"), "as_weight": a.get("as_weight"), "as_offset": record.get("as_offset")}


def setting(record: dict) -> tuple:
    """Row key: (attack, model, batch size, iterations, the arm as sorted JSON)."""
    return (record["attack"], record["model"], record["batch_size"], record["iterations"],
            json.dumps(arm(record), sort_keys=True, default=str))


def target_key(record: dict) -> tuple:
    """Which target batch the record attacked: dataset, data config, indices."""
    data = record.get("config", {}).get("data")
    return (record.get("dataset"), json.dumps(data, sort_keys=True, default=str), tuple(record["target_indices"]))


def restart_score(record: dict) -> float:
    """What restarts are ranked by (lower wins): the matching term or the final objective."""
    rule = record.get("config", {}).get("attack", {}).get("restart_selection") or "matching"
    terms = record.get("terms") or {}
    value = terms["matching"] if rule == "matching" and "matching" in terms else record.get("loss")
    return float(value) if value is not None and np.isfinite(value) else np.inf


def best_restarts(records: list[dict]) -> list[dict]:
    """One record per (arm, target): the ok restart with the lowest restart_score, else any failed one."""
    best = {}
    for r in records:
        key = (setting(r), target_key(r))
        old = best.get(key)
        if old is None or (r.get("status") == "ok" and (old.get("status") != "ok" or restart_score(r) < restart_score(old))):
            best[key] = r
    return list(best.values())


def value(record: dict, metric: str) -> float:
    """The record's metric, NaN for a failed attack or a record without it."""
    v = record.get(metric) if record.get("status") == "ok" else None
    return float(v) if v is not None else np.nan


def _baseline_context(record: dict) -> str:
    a = {k: v for k, v in arm(record).items() if k not in ("as_weight", "as_offset")}
    name, _, kind = record["attack"].rpartition(":")
    kind = kind.removesuffix("+as")
    kind = "ig" if kind == "gipip" else kind
    return json.dumps([record.get("_dir"), name, kind, record.get("model"), record.get("batch_size"),
                       record.get("iterations"), a, target_key(record)], sort_keys=True, default=str)


def baseline_pairs(records: list[dict], key=setting) -> dict:
    """key(arm's record) -> [(record, its baseline record)] for every record with λ_AS > 0 whose target
    was also attacked by an arm with λ_AS = 0 and otherwise the same setting (preferring the same c).
    Records: best restarts; `_dir` (report.load) keeps different studies apart."""
    candidates = defaultdict(list)
    for r in records:
        if not arm(r).get("as_weight"):
            candidates[_baseline_context(r)].append(r)
    out = defaultdict(list)
    for r in records:
        found = candidates.get(_baseline_context(r)) if arm(r).get("as_weight") else None
        if found:
            out[key(r)].append((r, closest_baseline(r, found)))
    return out


def closest_baseline(record: dict, candidates: list[dict]) -> dict:
    """Of several baseline records for the record's target, the one of the same study and setting
    (λ_AS and c aside), then with the same c, then the first."""
    context, offset = _baseline_context(record), arm(record).get("as_offset")
    return min(candidates, key=lambda b: (_baseline_context(b) != context, arm(b).get("as_offset") != offset))


def compare(pairs: list[tuple[dict, dict]]) -> dict:
    """Paired statistics of (treatment, baseline) records: {"psnr": stats, "ssim": stats, "ssim_padded":
    whether the SSIM is the authors' (every ok record has ssim_padded), else dm-pix ssim}."""
    ok = [r for pair in pairs for r in pair if r.get("status") == "ok"]
    padded = bool(ok) and all("ssim_padded" in r for r in ok)
    ssim = "ssim_padded" if padded else "ssim"
    out = {"ssim_padded": padded}
    for name, metric in (("psnr", "psnr"), ("ssim", ssim)):
        out[name] = paired_stats([value(t, metric) for t, _ in pairs], [value(b, metric) for _, b in pairs])
    return out


def compare_all(pairs: dict) -> dict:
    """compare() per key of `pairs` ({key: [(treatment, baseline), ...]}), every metric's p-values
    Holm-adjusted over the keys (paired.adjust_family): the arms of one table are one family."""
    compared = {key: compare(ps) for key, ps in pairs.items()}
    for metric in ("psnr", "ssim"):
        adjust_family([c[metric] for c in compared.values()])
    return compared


def distinguishing(arms: list[dict]) -> list[str]:
    """Fields whose values differ among `arms` (setting dicts), in the first arm's field order."""
    fields = list(dict.fromkeys(f for a in arms for f in a))
    return [f for f in fields if len({json.dumps(a.get(f), default=str) for a in arms}) > 1]


def _labels(groups: dict) -> dict:
    """Row key -> "other settings": the setting_label, plus the fields that tell apart arms that would
    otherwise show the same columns (e.g. two values of the AE offset c)."""
    shown = {}
    for key, group in groups.items():
        r, a = group[0], arm(group[0])
        shown[key] = (key[:4], *(a.get(f) for f in LABELLED), r.get("setting_label", ""))
    collide = defaultdict(list)
    for key, cols in shown.items():
        collide[cols].append(key)
    labels = {}
    for keys in collide.values():
        arms = [arm(groups[k][0]) for k in keys]
        extra = [f for f in distinguishing(arms) if f not in LABELLED] if len(keys) > 1 else []
        for k, a in zip(keys, arms):
            label = groups[k][0].get("setting_label", "")
            labels[k] = ", ".join([p for p in [label] if p] + [f"{f}={a.get(f)}" for f in extra if f"{f}=" not in label])
    return labels


def labels_given(records: list[dict]) -> bool:
    """Whether every ok record attacked with the true labels given (label_source "given"): its label
    accuracy is then 1 by construction, and a table says "given" instead."""
    ok = [r for r in records if r.get("status") == "ok"]
    return bool(ok) and all(r.get("label_source") == "given" for r in ok)


def table(records: list[dict]) -> str:
    """Markdown table of mean ± std per arm (failed attacks counted, not averaged) and its paired
    differences against its λ_AS = 0 baseline, with the PSNR verdict (paired.verdict; p-values
    Holm-adjusted over the table's arms)."""
    best = best_restarts(records)
    groups = defaultdict(list)
    for r in best:
        groups[setting(r)].append(r)
    compared = compare_all(baseline_pairs(best))
    labels = _labels(groups)
    tested = "p (Wilcoxon; Holm over the table's arms)" if len(compared) > 1 else "p (Wilcoxon)"
    header = ["attack", "model", "bs", "iterations", "λ_TV", "λ_AS", "other settings", "n ok / n",
              *(HEADERS.get(m, m) for m in METRICS), "psnr median", f"psnr < {FAILURE_PSNR:g} dB",
              "Δpsnr vs λ_AS=0: mean [95 % CI], median, better/worse", tested, "psnr verdict",
              "Δssim_padded vs λ_AS=0: mean [95 % CI], median, better/worse", tested]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fallback = False
    for key, group in groups.items():
        ok = [r for r in group if r.get("status") == "ok"]
        a = arm(group[0])
        cells = [str(v) for v in key[:4]] + [str(a.get(f)) for f in LABELLED] + [labels[key], f"{len(ok)} / {len(group)}"]
        for m in METRICS:
            values = np.array([r[m] for r in ok if m in r], float)
            if m == "label_accuracy" and labels_given(ok):
                cells.append("given")
            else:
                cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "–")
        psnr = np.array([value(r, "psnr") for r in group])
        cells.append(f"{np.nanmedian(psnr):.3f}" if np.isfinite(psnr).any() else "–")
        cells.append(f"{failure_rate(psnr, FAILURE_PSNR):.0%}")
        if key in compared:
            c = compared[key]
            mark = "" if c["ssim_padded"] else " †"
            fallback |= not c["ssim_padded"]
            cells += [format_delta(c["psnr"], 2), format_tested(c["psnr"]), verdict(c["psnr"]),
                      format_delta(c["ssim"], 3) + mark, format_tested(c["ssim"])]
        else:
            cells += ["–"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    if fallback:
        lines += ["", "† dm-pix ssim: these records predate ssim_padded (the authors' zero-padded SSIM)."]
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
        warn_duplicates(path, found)
        records += found
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
