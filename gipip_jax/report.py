"""Report: a study or experiment directory as a markdown + HTML page with tables, plots and image grids.

    gipip-jax report W

W is either one study's work directory (W/results.jsonl) or an experiment directory whose
W/experiment.json names its studies (written by the drivers in experiments/):

    {"title": ..., "description": ..., "x_label": "auxiliary data (% of the pool)",
     "baseline": "IG",                       # optional: paired per-target differences against it
     "series_names": {"gipip": "w/ AS"},     # optional: attack kind -> series name
     "studies": [{"dir": "cifar10/ae_0.5", "x": 0.5, "series": "GI-PIP"},   # series optional
                 {"dir": "cifar10/ig", "x": null}, ...],                    # x null: a floor line
     "paper": [{"series": "w/ AS", "x": "bs 1", "metric": "ssim", "value": 0.53}, ...]}

Every record contributes to a *cell* (series, x): series from the study entry, else the attack kind
(ig / gipip / gan / dip) through `series_names`; x from the study entry, else the record's setting
label (a single study's defenses, say). Per target the restart with the lowest objective counts
(summarize.best_restarts); a cell is mean ± std over its targets.

Writes W/report.md, W/report.html and W/report/ with one PNG per metric (metric vs x with std error
bars: lines when every x is a number, grouped bars otherwise; paper values as black diamonds) and one
image grid per set of targets (ground truth, then every cell's best restart, order-matched).
"""

from __future__ import annotations

import html
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from gipip_jax import results  # noqa: E402
from gipip_jax.summarize import best_restarts  # noqa: E402

METRICS = {"psnr": "PSNR (dB, higher = more leakage)", "ssim": "SSIM (higher = more leakage)",
           "lpips": "LPIPS (lower = more leakage)"}
SERIES_NAMES = {"ig": "IG", "gipip": "GI-PIP", "gan": "GAN prior", "dip": "DIP + features"}
MAX_GRID_COLUMNS = 12


class ReportError(ValueError):
    """A directory that holds no study results or a malformed experiment.json."""


def load(workdir: str) -> tuple[dict, list[dict]]:
    """(manifest, records); each record gets `_series`, `_x`, `_dir`. Single studies get a default manifest."""
    manifest_path = os.path.join(workdir, "experiment.json")
    if os.path.exists(manifest_path):
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
            entries = list(manifest["studies"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ReportError(f"{manifest_path} is not a valid experiment manifest: {error!r}") from None
    elif os.path.exists(os.path.join(workdir, "results.jsonl")):
        manifest, entries = {"title": f"Study {os.path.basename(os.path.abspath(workdir))}"}, [{"dir": "."}]
        manifest["studies"] = entries
    else:
        raise ReportError(f"{workdir} has neither results.jsonl (a study) nor experiment.json (an experiment)")
    names = {**SERIES_NAMES, **manifest.get("series_names", {})}
    records = []
    for entry in entries:
        path = os.path.join(workdir, entry["dir"], "results.jsonl")
        found = best_restarts(results.read_records(path))
        if not found:
            print(f"report: no results yet in {path}; skipped")
        for r in found:
            kind = r["attack"].split(":")[-1]
            x = entry["x"] if "x" in entry else (r.get("setting_label") or "default")
            records.append({**r, "_series": entry.get("series") or names.get(kind, kind), "_x": x, "_dir": entry["dir"]})
    if not records:
        raise ReportError(f"no finished attacks under {workdir}")
    return manifest, records


def cells(records: list[dict]) -> dict[tuple, list[dict]]:
    """(series, x) -> records, in first-seen order."""
    out = defaultdict(list)
    for r in records:
        out[(r["_series"], _hashable(r["_x"]))].append(r)
    return out


def _hashable(x):
    return json.dumps(x) if isinstance(x, (list, dict)) else x


def _stats(group: list[dict], metric: str) -> tuple[float, float, int]:
    values = np.array([r[metric] for r in group if r.get("status") == "ok" and metric in r], float)
    return (float(values.mean()), float(values.std()), len(values)) if len(values) else (np.nan, np.nan, 0)


def _target_key(r: dict) -> tuple:
    return (r["dataset"], json.dumps(r["config"]["data"], sort_keys=True), tuple(r["target_indices"]))


def paired_differences(groups: dict, baseline: str, metric: str) -> dict[tuple, tuple[float, float, int]]:
    """Per cell: mean ± std over shared targets of (cell − baseline) for `metric`.

    Baseline series: `baseline` itself or `baseline (...)` (e.g. "IG (CIFAR-10)"); targets pair up by
    dataset, data config and indices. The baseline's record for a target is the one with the same x if
    there is one, else its only x.
    """
    def is_baseline(series):
        return series == baseline or series.startswith(f"{baseline} (")

    base = defaultdict(dict)
    for (series, x), group in groups.items():
        if is_baseline(series):
            for r in group:
                if r.get("status") == "ok":
                    base[_target_key(r)][x] = r[metric]
    out = {}
    for (series, x), group in groups.items():
        if is_baseline(series):
            continue
        diffs = []
        for r in group:
            ref = base.get(_target_key(r), {})
            value = ref.get(x, next(iter(ref.values())) if len(ref) == 1 else None)
            if r.get("status") == "ok" and value is not None:
                diffs.append(r[metric] - value)
        if diffs:
            out[(series, x)] = (float(np.mean(diffs)), float(np.std(diffs)), len(diffs))
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


def table(manifest: dict, groups: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per cell with n ok / n, metrics, paired Δ and the paper's values."""
    baseline = manifest.get("baseline")
    deltas = {m: paired_differences(groups, baseline, m) for m in ("psnr", "ssim")} if baseline else {}
    paper = {(p["series"], _hashable(p["x"]), p["metric"]): p["value"] for p in manifest.get("paper", [])}
    paper_metrics = sorted({p["metric"] for p in manifest.get("paper", [])})
    header = [manifest.get("x_label", "setting"), "series", "n ok / n", "PSNR", "SSIM", "LPIPS", "label acc."]
    header += [f"Δ{m.upper()} vs {baseline}" for m in deltas] + [f"paper {m.upper()}" for m in paper_metrics]
    rows = []
    for (series, x), group in groups.items():
        ok = sum(r.get("status") == "ok" for r in group)
        row = ["(all)" if x is None else str(x), series, f"{ok} / {len(group)}"]
        row += [_fmt(*_stats(group, m)[:2]) for m in ("psnr", "ssim", "lpips", "label_accuracy")]
        row += [_fmt(*deltas[m][(series, x)][:2]) if (series, x) in deltas[m] else "–" for m in deltas]
        row += [f"{paper[(series, x, m)]:.2f}" if (series, x, m) in paper else "–" for m in paper_metrics]
        rows.append(row)
    return header, rows


def plot_metric(manifest: dict, groups: dict, metric: str, path: str) -> bool:
    """metric vs x per series with std error bars; False (nothing written) when no cell has the metric."""
    stats = {key: _stats(group, metric) for key, group in groups.items()}
    stats = {k: v for k, v in stats.items() if v[2]}
    if not stats:
        return False
    series = list(dict.fromkeys(s for s, _ in stats))
    xs = list(dict.fromkeys(x for _, x in stats if x is not None))
    numeric = bool(xs) and all(isinstance(x, (int, float)) for x in xs)
    paper = [p for p in manifest.get("paper", []) if p["metric"] == metric]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(xs) + 3), 3.6), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(len(series), 1)
    for i, s in enumerate(series):
        color = colors[i % len(colors)]
        floor = stats.get((s, None))
        if floor:
            ax.axhline(floor[0], color=color, ls="--", label=f"{s} (n={floor[2]})")
            ax.axhspan(floor[0] - floor[1], floor[0] + floor[1], color=color, alpha=0.12)
        points = [(x, stats[(s, x)]) for x in xs if (s, x) in stats]
        if not points:
            continue
        if numeric:
            px = [x for x, _ in points]
            ax.errorbar(px, [v[0] for _, v in points], yerr=[v[1] for _, v in points], marker="o", capsize=3,
                        color=color, label=s)
        else:
            px = [xs.index(x) + (i - (len(series) - 1) / 2) * width for x, _ in points]
            ax.bar(px, [v[0] for _, v in points], width, yerr=[v[1] for _, v in points], capsize=3,
                   color=color, label=s)
    for p in paper:
        if p["series"] in series and _hashable(p["x"]) in xs:
            i = series.index(p["series"])
            px = p["x"] if numeric else xs.index(_hashable(p["x"])) + (i - (len(series) - 1) / 2) * width
            ax.plot(px, p["value"], "kD", ms=5, label="paper" if p is paper[0] else None)
    if numeric:
        if min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    elif xs:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=30 if len(xs) > 4 else 0, ha="right" if len(xs) > 4 else "center")
    ax.set_xlabel(manifest.get("x_label", "setting"))
    ax.set_ylabel(METRICS.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _reconstructions(workdir: str, directory: str) -> dict[int, np.ndarray]:
    folder = os.path.join(workdir, directory, "reconstructions")
    images = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with np.load(os.path.join(folder, name)) as saved:
            images.update(zip(saved["ids"].tolist(), saved["images01"]))
    return images


def _ground_truth(r: dict) -> np.ndarray:
    from gipip_jax.jobs import load_dataset

    images = load_dataset(ml_collections.ConfigDict(r["config"]["data"]), r["split"])
    return images.take(np.asarray(r["target_indices"]))[0]


def image_grids(workdir: str, groups: dict, folder: str) -> list[tuple[str, str]]:
    """One PNG per set of targets: ground truth row, then one row per cell (order-matched best restarts).

    Returns (title, path) pairs. At most MAX_GRID_COLUMNS images per row (the first targets' images).
    """
    by_targets = defaultdict(dict)   # targets -> {(series, x): {target: record}}
    for key, group in groups.items():
        for r in group:
            if r.get("status") == "ok":
                data_key = (r["dataset"], json.dumps(r["config"]["data"], sort_keys=True), r["batch_size"])
                by_targets[data_key].setdefault(key, {})[tuple(r["target_indices"])] = r
    out, cache = [], {}
    for number, (data_key, rows) in enumerate(by_targets.items()):
        targets = sorted(set.intersection(*(set(v) for v in rows.values())))
        if not targets:
            continue
        first = next(iter(rows.values()))
        truth = np.concatenate([_ground_truth(first[t]) for t in targets])[:MAX_GRID_COLUMNS]
        labelled = [("ground truth", truth)]
        for (series, x), per_target in rows.items():
            images = []
            for t in targets:
                r = per_target[t]
                if r["_dir"] not in cache:
                    cache[r["_dir"]] = _reconstructions(workdir, r["_dir"])
                found = cache[r["_dir"]].get(r["attack_id"])
                if found is None:
                    break
                images.append(found[np.asarray(r["per_image"]["order"])])
            if len(images) == len(targets):
                name = series if x is None else f"{series}\n{x}"
                labelled.append((name, np.concatenate(images)[:MAX_GRID_COLUMNS]))
        path = os.path.join(folder, f"grid_{number}.png")
        _save_labelled_grid(path, labelled)
        title = f"{data_key[0]}, batch size {data_key[2]}, targets {', '.join(str(list(t)) for t in targets)}"
        out.append((title, path))
    return out


def _save_labelled_grid(path: str, rows: list[tuple[str, np.ndarray]]) -> None:
    columns = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.1 * columns + 1.2, 1.1 * len(rows)), dpi=100,
                             squeeze=False)
    for i, (name, images) in enumerate(rows):
        for j in range(columns):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(images):
                ax.imshow(np.clip(images[j], 0, 1), interpolation="nearest")
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.savefig(path)
    plt.close(fig)


def build(workdir: str) -> dict:
    """Writes W/report.md, W/report.html and W/report/*.png; returns their paths."""
    manifest, records = load(workdir)
    groups = cells(records)
    folder = os.path.join(workdir, "report")
    os.makedirs(folder, exist_ok=True)
    header, rows = table(manifest, groups)
    plots = [(m, os.path.join(folder, f"{m}.png")) for m in METRICS]
    plots = [(m, p) for m, p in plots if plot_metric(manifest, groups, m, p)]
    grids = image_grids(workdir, groups, folder)
    blocks = [("h1", manifest.get("title", "Report"))]
    if manifest.get("description"):
        blocks.append(("p", manifest["description"]))
    if manifest.get("command"):
        blocks.append(("code", manifest["command"]))
    blocks.append(("p", f"Budget: {_budget(records)}. Cells: mean ± std over targets (best restart per target)."))
    blocks += [("h2", "Results"), ("table", (header, rows)), ("h2", "Plots")]
    blocks += [("img", (METRICS[m], os.path.relpath(p, workdir))) for m, p in plots]
    blocks.append(("h2", "Reconstructions"))
    blocks += [("img", (title, os.path.relpath(p, workdir))) for title, p in grids]
    for note in manifest.get("notes", []):
        blocks.append(("p", note))
    paths = {"markdown": os.path.join(workdir, "report.md"), "html": os.path.join(workdir, "report.html"),
             "plots": [p for _, p in plots], "grids": [p for _, p in grids]}
    _write(paths["markdown"], _markdown(blocks))
    _write(paths["html"], _html(manifest.get("title", "Report"), blocks))
    return paths


def _write(path: str, text: str) -> None:
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def _markdown(blocks) -> str:
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


def _html(title: str, blocks) -> str:
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
    print(f"wrote {paths['markdown']}, {paths['html']}, {len(paths['plots'])} plot(s), {len(paths['grids'])} grid(s)")
    return 0
