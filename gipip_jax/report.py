"""Report: a study or experiment directory as a markdown + HTML page with tables, plots and image grids.

    gipip-jax report W

W is either one study's work directory (W/results.jsonl) or an experiment directory whose
W/experiment.json names its studies (written by the drivers in experiments/):

    {"title": ..., "description": ..., "x_label": "auxiliary data (% of the pool)",
     "baseline": "IG",                       # optional: paired per-target differences against it
     "series_names": {"gipip": "w/ AS"},     # optional: attack kind -> series name
     "x_field": "as_weight",                 # optional: x from this grid field of each record's arm
     "studies": [{"dir": "cifar10/ae_0.5", "x": 0.5, "series": "GI-PIP"},   # series optional
                 {"dir": "cifar10/ig", "x": null}, ...],                    # x null: a floor line
                 # optional per study: "where": {"as_weight": [0.0]} keeps the arms whose grid field
                 # is one of the values (one study's IG arm as another study's baseline series, say)
     "paper": [{"series": "w/ AS", "x": "bs 1", "metric": "ssim", "value": 0.53}, ...]}

Every record contributes to a *cell* (series, x): series from the study entry, else the attack kind
(ig / gipip / gan / dip) through `series_names`; x from the study entry, else the manifest's
`x_field` of the record's arm (two studies' λ_AS arms paired arm by arm, say), else the record's
setting label (a single study's defenses, say); arms that would share a cell get the differing grid fields
in their name (load). Per target the restart `config.attack.restart_selection` picks counts
(summarize.best_restarts); a cell is mean ± std over its targets, plus the PSNR median and the
failure rate (targets below 15 dB). Each non-baseline cell is paired per target with the baseline
(the manifest's, else the study's λ_AS = 0 arm): mean difference with its 95 % bootstrap CI, median,
targets better/worse and the Wilcoxon signed-rank p (Holm-adjusted over the report's arms where
there are several), for PSNR and the authors' zero-padded SSIM
(`ssim_padded`; older records fall back to dm-pix SSIM, marked †), and a verdict per cell (gain, loss,
no gain beyond noise, inconclusive: paired.verdict). The paper's SSIM values are the
authors' zero-padded SSIM and are shown next to ssim_padded only.

Writes W/report.md, W/report.html and W/report/ with one PNG per metric (metric vs x with std error
bars: lines when every x is a number, grouped bars otherwise; paper values as black diamonds), when
the records carry optimization traces the PSNR gap to the baseline vs iterations and the weighted
term-gradient norms vs iterations (report_plots), and one image grid per set of targets (ground
truth, then every cell's best restart, order-matched).
"""

from __future__ import annotations

import html
import json
import os
from collections import defaultdict

import ml_collections
import numpy as np

from gipip_jax import results, summarize
from gipip_jax.paired import MIN_TARGETS, RESAMPLES, SEED, SIGNIFICANCE, failure_rate, format_delta, format_tested, verdict
from gipip_jax.report_plots import (METRICS, cell_stats, hashable, plot_gap, plot_grad_norms, plot_metric,
                                   save_labelled_grid, steering_share)
from gipip_jax.workdir import write_text

SERIES_NAMES = {"ig": "IG", "gipip": "GI-PIP", "gan": "GAN prior", "dip": "DIP + features"}
MAX_GRID_COLUMNS = 12
STEERING = "‖λ_AS ∇AS‖ / ‖∇matching‖: end, peak (median over targets)"
FAILURE_PSNR = summarize.FAILURE_PSNR
SSIM_AUTHORS = "SSIM (authors', zero-padded)"
NOISE_FLOOR = "benchmarks/results/chaos.json"   # the published rounding measurement (benchmarks/chaos.py)


def noise_floor(iterations: int, path: str | None = None) -> str | None:
    """A sentence on float rounding's per-target PSNR spread at the measured budget nearest
    `iterations` (benchmarks/chaos.py), or None while none is published."""
    from gipip_jax.assembly import resolve_path

    path = resolve_path(path or NOISE_FLOOR)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        budgets = json.load(f)["budgets"]
    nearest = min(budgets, key=lambda b: abs(int(b) - iterations))
    s = budgets[nearest]["abs_delta_psnr"]
    return (f"Noise floor: float rounding alone (the same attacks at another engine width, benchmarks/chaos.py, "
            f"IG on the untrained ConvNet at {int(nearest):,} iterations) moves one target's PSNR by a median "
            f"{s['median']:.2f} dB (90th percentile {s['p90']:.2f}, max {s['max']:.2f}); a paired difference "
            "is only worth reading where it stands clear of that, and two runs replay each other bit for bit "
            "only with the same plan (W/plan.json, engine.plan).")


class ReportError(ValueError):
    """A directory that holds no study results or a malformed experiment.json."""


def load(workdir: str) -> tuple[dict, list[dict]]:
    """(manifest, records); each record gets `_series`, `_x`, `_dir`. Single studies get a default manifest.

    Arms of one study that would share a cell (same series and x, e.g. two AE offsets c) are told
    apart by the grid fields that differ between them: appended to x when x comes from the records'
    setting labels, to the series when the manifest gives x.
    """
    manifest_path = os.path.join(workdir, "experiment.json")
    if os.path.exists(manifest_path):
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
            entries = list(manifest["studies"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ReportError(f"{manifest_path} is not a valid experiment manifest: {error!r}") from None
    elif os.path.exists(results.records_path(workdir)):
        manifest, entries = {"title": f"Study {os.path.basename(os.path.abspath(workdir))}"}, [{"dir": "."}]
        manifest["studies"] = entries
    else:
        raise ReportError(f"{workdir} has neither results.jsonl (a study) nor experiment.json (an experiment)")
    names = {**SERIES_NAMES, **manifest.get("series_names", {})}
    field = manifest.get("x_field")
    records, read = [], set()
    for entry in entries:
        if not isinstance(entry.get("where", {}), dict):
            raise ReportError(f"{manifest_path}: a study's \"where\" must map grid fields to values, "
                              f"got {entry['where']!r}")
        path = results.records_path(os.path.join(workdir, entry["dir"]))
        found = results.read_records(path)
        if os.path.realpath(path) not in read:   # once per file, though several entries may read it
            read.add(os.path.realpath(path))
            results.warn_duplicates(path, found)
        found = summarize.best_restarts(found)
        if not found:
            print(f"report: no results yet in {path}; skipped")
        found = [r for r in found if _selected(r, entry.get("where"))]
        mine = []
        for r in found:
            kind = r["attack"].split(":")[-1]
            if "x" in entry:
                x = entry["x"]
            elif field:
                x = summarize.arm(r).get(field)
            else:
                x = r.get("setting_label") or "default"
            mine.append({**r, "_series": entry.get("series") or names.get(kind, kind), "_x": x, "_dir": entry["dir"]})
        records += _split_colliding_arms(mine, x_given="x" in entry or bool(field))
    if not records:
        raise ReportError(f"no finished attacks under {workdir}")
    return manifest, records


def _selected(record: dict, where: dict | None) -> bool:
    """Whether the record's arm has every `where` grid field at one of its values (a value or a list)."""
    arm = summarize.arm(record)
    return all(arm.get(field) in (values if isinstance(values, list) else [values])
               for field, values in (where or {}).items())


def _split_colliding_arms(records: list[dict], x_given: bool) -> list[dict]:
    by_cell = defaultdict(list)
    for r in records:
        by_cell[(r["_series"], hashable(r["_x"]))].append(r)
    for group in by_cell.values():
        arms = {summarize.setting(r): summarize.arm(r) for r in group}
        if len(arms) < 2:
            continue
        fields = summarize.distinguishing(list(arms.values()))
        for r in group:
            a = summarize.arm(r)
            suffix = ", ".join(f"{f}={a.get(f)}" for f in fields)
            if x_given:
                r["_series"] = f"{r['_series']} ({suffix})"
            else:
                r["_x"] = suffix if r["_x"] == "default" else f"{r['_x']}, {suffix}"
    return records


def cells(records: list[dict]) -> dict[tuple, list[dict]]:
    """(series, x) -> records, in first-seen order."""
    out = defaultdict(list)
    for r in records:
        out[_cell(r)].append(r)
    return out


def _cell(r: dict) -> tuple:
    return (r["_series"], hashable(r["_x"]))


def baseline_name(manifest: dict) -> str:
    return manifest.get("baseline") or "λ_AS = 0"


def pairs(manifest: dict, groups: dict) -> dict[tuple, list[tuple[dict, dict]]]:
    """Per non-baseline cell: [(record, its baseline's record for the same target)].

    With a manifest "baseline": that series, or `baseline (...)` (e.g. "IG (CIFAR-10)"); targets pair
    up by dataset, data config and indices, and the baseline's record for a target is the one with the
    same x if there is one, else its only x (of several, summarize.closest_baseline's). Without: the arm of the same study with λ_AS = 0 and
    otherwise the same setting (summarize.baseline_pairs).
    """
    baseline = manifest.get("baseline")
    if not baseline:
        return dict(summarize.baseline_pairs([r for g in groups.values() for r in g], key=_cell))

    def is_baseline(series):
        return series == baseline or series.startswith(f"{baseline} (")

    base = defaultdict(dict)
    for (series, x), group in groups.items():
        if is_baseline(series):
            for r in group:
                base[summarize.target_key(r)].setdefault(x, []).append(r)
    out = {}
    for (series, x), group in groups.items():
        if is_baseline(series):
            continue
        found = []
        for r in group:
            ref = base.get(summarize.target_key(r), {})
            candidates = ref.get(x, next(iter(ref.values())) if len(ref) == 1 else None)
            if candidates:
                found.append((r, summarize.closest_baseline(r, candidates)))
        if found:
            out[(series, x)] = found
    return out


def _budget(records: list[dict]) -> str:
    parts = defaultdict(set)
    for r in records:
        cfg = r["config"]
        parts["dataset"].add(f"{r['dataset']} {r['split']}")
        parts["victim"].add(f"{r['model']} (trained {r['victim'].get('epochs', 0)} epochs)")
        parts["batch size"].add(str(r["batch_size"]))
        parts["iterations"].add(str(r["iterations"]))
        parts["image side"].add(str(cfg["data"].get("image_size") or "native"))
        parts["restarts"].add(str(r["restarts"]))
    return "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in parts.items())


def _fmt(mean: float, std: float) -> str:
    return "–" if np.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def comparisons(paired: dict) -> dict[tuple, dict]:
    """Per non-baseline cell (of `pairs`): summarize.compare's paired statistics for PSNR and SSIM,
    each metric's p-values Holm-adjusted over the report's cells (summarize.compare_all)."""
    return summarize.compare_all(paired)


def table(manifest: dict, groups: dict, compared: dict | None = None) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows and notes: one row per cell with n ok / n, metrics (mean ± std; PSNR median and
    failure rate), paired Δ against the baseline with CI and Wilcoxon p, and the paper's values."""
    compared = comparisons(pairs(manifest, groups)) if compared is None else compared
    baseline = baseline_name(manifest)
    paper = {(p["series"], hashable(p["x"]), p["metric"]): p["value"] for p in manifest.get("paper", [])}
    paper_metrics = sorted({p["metric"] for p in manifest.get("paper", [])})
    header = [manifest.get("x_label", "setting"), "series", "n ok / n", "PSNR", "PSNR median",
              f"PSNR < {FAILURE_PSNR:g} dB", "SSIM (dm-pix)", SSIM_AUTHORS]
    header += [f"paper {SSIM_AUTHORS if m == 'ssim' else m.upper()}" for m in paper_metrics]
    header += ["LPIPS", "label acc."]
    steering = {key: steering_share(group) for key, group in groups.items()}
    show_steering = any(steering.values())
    if show_steering:
        header.append(STEERING)
    if compared:
        tested = "(Wilcoxon; Holm over the table's arms)" if len(compared) > 1 else "(Wilcoxon)"
        header += [f"ΔPSNR vs {baseline}: mean [95 % CI], median, better/worse", f"ΔPSNR p {tested}",
                   f"Δ{SSIM_AUTHORS} vs {baseline}: mean [95 % CI], median, better/worse", f"ΔSSIM p {tested}"]
    rows, fallback = [], False
    for (series, x), group in groups.items():
        ok = sum(r.get("status") == "ok" for r in group)
        psnr = np.array([summarize.value(r, "psnr") for r in group])
        row = ["(all)" if x is None else str(x), series, f"{ok} / {len(group)}", _fmt(*cell_stats(group, "psnr")[:2]),
               f"{np.nanmedian(psnr):.3f}" if np.isfinite(psnr).any() else "–",
               f"{failure_rate(psnr, FAILURE_PSNR):.0%}"]
        row += [_fmt(*cell_stats(group, m)[:2]) for m in ("ssim", "ssim_padded")]
        row += [f"{paper[(series, x, m)]:.2f}" if (series, x, m) in paper else "–" for m in paper_metrics]
        row += [_fmt(*cell_stats(group, "lpips")[:2]),
                "given" if summarize.labels_given(group) else _fmt(*cell_stats(group, "label_accuracy")[:2])]
        if show_steering:
            share = steering[(series, x)]
            row.append("–" if share is None else f"{share[0]:.1e}, {share[1]:.1e}")
        if compared:
            c = compared.get((series, x))
            if c:
                fallback |= not c["ssim_padded"]
                row += [format_delta(c["psnr"], 2), format_tested(c["psnr"]),
                        format_delta(c["ssim"], 3) + ("" if c["ssim_padded"] else " †"), format_tested(c["ssim"])]
            else:
                row += ["–"] * 4
        rows.append(row)
    notes = ["† these records predate ssim_padded: the SSIM difference is dm-pix SSIM, not the authors' "
             "(not comparable with the paper's values)."] if fallback else []
    if show_steering:
        notes.append(f"{STEERING}: the anomaly-score prior's share of the step's gradient — per target the ratio "
                     "of the two gradient norms (w.r.t. the image) at the last trace point and at its largest; "
                     "well below 1 means the matching term dominates the step's gradient.")
    return header, rows, notes


def verdicts(manifest: dict, compared: dict) -> list[str]:
    """One sentence per non-baseline cell: paired.verdict for PSNR and the authors' SSIM, with the
    numbers it rests on (mean Δ [95 % CI], median, better/worse, Wilcoxon p)."""
    lines = []
    for (series, x), c in compared.items():
        ssim = SSIM_AUTHORS if c["ssim_padded"] else "SSIM (dm-pix)"
        parts = [f"{name}: {verdict(c[key])} (Δ {format_delta(c[key], digits)}, p {format_tested(c[key])})"
                 for key, name, digits in (("psnr", "PSNR", 2), ("ssim", ssim, 3))]
        where = "" if x is None else f", {x}"
        lines.append(f"{series}{where}, against {baseline_name(manifest)} on {c['psnr']['n']} paired targets: "
                     + "; ".join(parts) + ".")
    return lines


def ground_truth(r: dict) -> np.ndarray:
    """The record's target images, (B, H, W, C) in [0, 1], read from its dataset."""
    from gipip_jax.assembly import load_dataset

    images = load_dataset(ml_collections.ConfigDict(r["config"]["data"]), r["split"])
    return images.take(np.asarray(r["target_indices"]))[0]


def _cell_images(workdir: str, records: list[dict], cache: dict) -> np.ndarray | None:
    """The records' reconstructions in target order, (N, H, W, C) in [0, 1]; None if any is missing.

    `cache` maps a study directory to its reconstructions, read once per report.
    """
    images = []
    for r in records:
        if r["_dir"] not in cache:
            cache[r["_dir"]] = results.read_reconstructions(os.path.join(workdir, r["_dir"]))
        found = cache[r["_dir"]].get(r["attack_id"])
        if found is None:
            return None
        images.append(found[np.asarray(r["per_image"]["order"])])
    return np.concatenate(images)


def image_grids(workdir: str, groups: dict, folder: str) -> list[tuple[str, str]]:
    """PNGs of ground truth row, then one row per cell (order-matched best restarts), for every target.

    Targets whose reconstructions are not beside the records (W/reconstructions/wave_*.npz) get no grid.

    Returns (title, path) pairs, grid_0.png, grid_1.png, ...: the targets of one dataset and batch size
    are split over as many grids as it takes to keep a row at most MAX_GRID_COLUMNS images (at least
    one batch per grid); each title names the targets its grid shows.
    """
    by_targets = defaultdict(dict)   # targets -> {(series, x): {target: record}}
    for key, group in groups.items():
        for r in group:
            if r.get("status") == "ok":
                data_key = (r["dataset"], json.dumps(r["config"]["data"], sort_keys=True), r["batch_size"])
                by_targets[data_key].setdefault(key, {})[tuple(r["target_indices"])] = r
    out, cache = [], {}
    for data_key, rows in by_targets.items():
        targets = sorted(set.intersection(*(set(v) for v in rows.values())))
        first = next(iter(rows.values()))
        per_grid = max(1, MAX_GRID_COLUMNS // data_key[2])
        for chunk in (targets[i:i + per_grid] for i in range(0, len(targets), per_grid)):
            cell_rows = []
            for (series, x), per_target in rows.items():
                images = _cell_images(workdir, [per_target[t] for t in chunk], cache)
                if images is not None:
                    cell_rows.append((series if x is None else f"{series}\n{x}", images))
            if not cell_rows:   # no reconstructions beside the records (e.g. published results.jsonl only)
                continue
            labelled = [("ground truth", np.concatenate([ground_truth(first[t]) for t in chunk]))] + cell_rows
            path = os.path.join(folder, f"grid_{len(out)}.png")
            save_labelled_grid(path, labelled)
            title = f"{data_key[0]}, batch size {data_key[2]}, targets {', '.join(str(list(t)) for t in chunk)}"
            out.append((title, path))
    return out


def build(workdir: str) -> dict:
    """Writes W/report.md, W/report.html and W/report/*.png; returns their paths."""
    manifest, records = load(workdir)
    groups = cells(records)
    paired = pairs(manifest, groups)
    folder = os.path.join(workdir, "report")
    os.makedirs(folder, exist_ok=True)
    compared = comparisons(paired)
    header, rows, notes = table(manifest, groups, compared)
    # The SSIM plot: the authors' zero-padded SSIM (next to the paper's values) when the records have it.
    ssim = "ssim_padded" if any("ssim_padded" in r for r in records if r.get("status") == "ok") else "ssim"
    plots = [(m, os.path.join(folder, f"{m}.png")) for m in ("psnr", ssim, "lpips")]
    plots = [(m, p) for m, p in plots if plot_metric(manifest, groups, m, p)]
    traces = [(f"PSNR gap to {baseline_name(manifest)} vs iterations: mean over targets of the paired difference, "
               "95 % bootstrap CI band", os.path.join(folder, "gap_vs_iterations.png"),
               lambda path: plot_gap(paired, baseline_name(manifest), path)),
              ("Weighted term-gradient norms vs iterations (median over targets; log scale)",
               os.path.join(folder, "grad_norms.png"), lambda path: plot_grad_norms(groups, path))]
    traces = [(title, path) for title, path, draw in traces if draw(path)]
    grids = image_grids(workdir, groups, folder)
    blocks = [("h1", manifest.get("title", "Report"))]
    if manifest.get("description"):
        blocks.append(("p", manifest["description"]))
    if manifest.get("command"):
        blocks.append(("code", manifest["command"]))
    blocks.append(("p", f"Budget: {_budget(records)}. Cells: mean ± std over targets (per target the restart with "
                        "the lowest gradient-matching term, or objective where config.attack.restart_selection says "
                        f"so). PSNR < {FAILURE_PSNR:g} dB: share of targets below it (failed attacks included). "
                        f"Δ: per-target difference against {baseline_name(manifest)}, mean with its 95 % percentile-"
                        f"bootstrap CI over targets ({RESAMPLES:,} resamples, seed {SEED}), median, targets better/worse, two-sided Wilcoxon signed-rank p."
                        + (f" The paper's SSIM values are the authors' zero-padded SSIM: compare them with {SSIM_AUTHORS}, "
                           "not dm-pix SSIM." if manifest.get("paper") else "")))
    blocks += [("h2", "Results"), ("table", (header, rows))] + [("p", n) for n in notes]
    floor = noise_floor(max(r.get("iterations", 0) for r in records)) if paired else None
    if floor:
        blocks.append(("p", floor))
    if compared:
        blocks += [("h2", "Verdict"),
                   ("p", f"Per arm against {baseline_name(manifest)}: gain / loss when the 95 % bootstrap CI of the "
                         f"mean paired difference excludes 0 and the Wilcoxon p < {SIGNIFICANCE:g}; no gain beyond "
                         f"noise when the CI contains 0 and p >= {SIGNIFICANCE:g}; inconclusive when the two disagree; "
                         f"too few targets below {MIN_TARGETS} pairs (no outcome of fewer could reach p < "
                         f"{SIGNIFICANCE:g})."
                         + (f" {len(compared)} arms are compared with the same baseline, so each metric's p-values "
                            "are Holm-adjusted over them and the verdict reads the adjusted p: the chance of any "
                            f"false gain or loss among the arms stays below {SIGNIFICANCE:g}." if len(compared) > 1
                            else ""))]
        blocks += [("p", line) for line in verdicts(manifest, compared)]
    blocks.append(("h2", "Plots"))
    blocks += [("img", (METRICS[m], os.path.relpath(p, workdir))) for m, p in plots]
    blocks += [("img", (title, os.path.relpath(p, workdir))) for title, p in traces]
    blocks.append(("h2", "Reconstructions"))
    blocks += [("img", (title, os.path.relpath(p, workdir))) for title, p in grids]
    for note in manifest.get("notes", []):
        blocks.append(("p", note))
    paths = {"markdown": os.path.join(workdir, "report.md"), "html": os.path.join(workdir, "report.html"),
             "plots": [p for _, p in plots], "traces": [p for _, p in traces], "grids": [p for _, p in grids]}
    write_text(paths["markdown"], markdown_page(blocks))
    write_text(paths["html"], html_page(manifest.get("title", "Report"), blocks))
    return paths


def markdown_page(blocks) -> str:
    """Markdown of [(kind, value)] blocks: "h1", "h2", "p", "code" (text), "table" ((header, rows)),
    "img" ((title, path relative to the page))."""
    out = []
    for kind, value in blocks:
        if kind == "h1":
            out.append(f"# {value}")
        elif kind == "h2":
            out.append(f"## {value}")
        elif kind == "p":
            out.append(value)
        elif kind == "code":
            out.append(f"```\n{value}\n```")
        elif kind == "table":
            header, rows = value
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(row) + " |" for row in rows]
        elif kind == "img":
            title, src = value
            out.append(f"**{title}**\n\n![{title}]({src})")
        out.append("")
    return "\n".join(out)


def html_page(title: str, blocks) -> str:
    """A standalone HTML page of the same blocks as `markdown_page`."""
    body = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "code":
            body.append(f"<pre>{html.escape(value)}</pre>")
        elif kind == "table":
            header, rows = value
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            cells_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells_html}</tbody></table>")
        elif kind == "img":
            caption, src = value
            body.append(f"<figure><img src=\"{html.escape(src)}\" alt=\"{html.escape(caption)}\">"
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}pre{background:#f6f6f6;padding:8px}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def main(workdir: str) -> int:
    paths = build(workdir)
    print(f"wrote {paths['markdown']}, {paths['html']}, {len(paths['plots']) + len(paths['traces'])} plot(s), "
          f"{len(paths['grids'])} grid(s)")
    return 0
