"""The report's figures: metric vs x per series, the AS gap vs iterations, term-gradient norms, image grids.

`groups` is report.cells' {(series, x): best-restart records}; `pairs` is report.pairs'
{(series, x): [(record, its baseline's record for the same target)]}. Every function writes one PNG
and returns False (writing nothing) when the records hold nothing to draw.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gipip_jax.paired import bootstrap_mean_ci  # noqa: E402

METRICS = {"psnr": "PSNR (dB, higher = more leakage)", "ssim": "SSIM, dm-pix (higher = more leakage)",
           "ssim_padded": "SSIM, authors' zero-padded (higher = more leakage)",
           "lpips": "LPIPS (lower = more leakage)"}
PAPER_METRIC = {"ssim": "ssim_padded"}   # the paper's SSIM is the authors' zero-padded SSIM


def hashable(x):
    return json.dumps(x) if isinstance(x, (list, dict)) else x


def cell_stats(group: list[dict], metric: str) -> tuple[float, float, int]:
    values = np.array([r[metric] for r in group if r.get("status") == "ok" and metric in r], float)
    return (float(values.mean()), float(values.std()), len(values)) if len(values) else (np.nan, np.nan, 0)


def _name(series, x) -> str:
    return series if x is None else f"{series} · {x}"


def plot_metric(manifest: dict, groups: dict, metric: str, path: str) -> bool:
    """metric vs x per series with std error bars; paper values (manifest "paper", metric m drawn on the
    plot of PAPER_METRIC.get(m, m)) as black diamonds. False when no cell has the metric."""
    stats = {key: cell_stats(group, metric) for key, group in groups.items()}
    stats = {k: v for k, v in stats.items() if v[2]}
    if not stats:
        return False
    series = list(dict.fromkeys(s for s, _ in stats))
    xs = list(dict.fromkeys(x for _, x in stats if x is not None))
    numeric = bool(xs) and all(isinstance(x, (int, float)) for x in xs)
    paper = [p for p in manifest.get("paper", []) if PAPER_METRIC.get(p["metric"], p["metric"]) == metric]
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
    drawn = False
    for p in paper:
        if p["series"] in series and hashable(p["x"]) in xs:
            i = series.index(p["series"])
            px = p["x"] if numeric else xs.index(hashable(p["x"])) + (i - (len(series) - 1) / 2) * width
            ax.plot(px, p["value"], "kD", ms=5, label=None if drawn else "paper")
            drawn = True
    if numeric:
        if min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    elif xs:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=30 if len(xs) > 4 else 0,
                      ha="right" if len(xs) > 4 else "center")
    ax.set_xlabel(manifest.get("x_label", "setting"))
    ax.set_ylabel(METRICS.get(metric, metric))
    return _save_single(fig, ax, path)


def _save_single(fig, ax, path: str) -> bool:
    """Grid, legend and layout of a one-axes figure, saved to `path` and closed."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _traced(r: dict) -> dict | None:
    trace = r.get("trace") if r.get("status") == "ok" else None
    return trace if trace and trace.get("steps") else None


def _common_steps(traces: list[dict]) -> list[int]:
    steps = set(traces[0]["steps"])
    for t in traces[1:]:
        steps &= set(t["steps"])
    return sorted(steps)


def _at(trace: dict, values: list, steps: list[int]) -> np.ndarray:
    where = {s: i for i, s in enumerate(trace["steps"])}
    return np.array([values[where[s]] if values[where[s]] is not None else np.nan for s in steps], float)


def gap_curves(pairs: dict) -> dict:
    """(series, x) -> (steps, mean, ci_low, ci_high, n) of the per-target PSNR difference against the
    baseline at every step both traces share (95 % bootstrap CI over targets)."""
    out = {}
    for key, ps in pairs.items():
        ps = [(t, b) for t, b in ps if _traced(t) and _traced(b)]
        if not ps:
            continue
        steps = _common_steps([_traced(r) for pair in ps for r in pair])
        if not steps:
            continue
        d = np.stack([_at(_traced(t), _traced(t)["psnr"], steps) - _at(_traced(b), _traced(b)["psnr"], steps)
                      for t, b in ps])
        d = d[np.isfinite(d).all(axis=1)]
        if len(d):
            low, high = bootstrap_mean_ci(d)
            out[key] = (np.asarray(steps), d.mean(0), low, high, len(d))
    return out


def plot_gap(pairs: dict, baseline: str, path: str) -> bool:
    """The AS gap vs iterations: per non-baseline cell the mean over targets of PSNR − its baseline's
    PSNR at every traced step, with its 95 % bootstrap CI band."""
    curves = gap_curves(pairs)
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for (series, x), (steps, mean, low, high, n) in curves.items():
        line, = ax.plot(steps, mean, label=f"{_name(series, x)} (n={n})")
        if n > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.18, lw=0)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"ΔPSNR vs {baseline} (dB)")
    return _save_single(fig, ax, path)


def grad_norm_curves(groups: dict) -> dict:
    """(series, x) -> (steps, {term: median over targets of its weighted gradient norm}) from the traces."""
    out = {}
    for key, group in groups.items():
        traces = [t for t in map(_traced, group) if t and t.get("grad_norms")]
        if not traces:
            continue
        steps = _common_steps(traces)
        terms = list(dict.fromkeys(name for t in traces for name in t["grad_norms"]))
        medians = {}
        for name in terms:
            rows = [_at(t, t["grad_norms"][name], steps) for t in traces if name in t["grad_norms"]]
            medians[name] = np.nanmedian(np.stack(rows), axis=0) if steps else np.array([])
        if steps:
            out[key] = (np.asarray(steps), medians)
    return out


def steering_share(group: list[dict], term: str = "anomaly") -> tuple[float, float] | None:
    """How much `term` steers the step: per target, ‖weighted ∇term‖ / ‖∇matching‖ at every trace point;
    returns (median over targets of the last point's ratio, median over targets of the largest ratio),
    or None when no trace has both norms with `term` switched on (a nonzero norm somewhere)."""
    ratios = []
    for t in map(_traced, group):
        norms = (t or {}).get("grad_norms", {})
        if "matching" in norms and any(norms.get(term) or []):
            own, matching = (np.array(norms[k], float) for k in (term, "matching"))
            ratios.append(own / np.where(matching > 0, matching, np.nan))
    if not ratios:
        return None
    return float(np.nanmedian([r[-1] for r in ratios])), float(np.nanmedian([np.nanmax(r) for r in ratios]))


def plot_grad_norms(groups: dict, path: str) -> bool:
    """One panel per cell: the median over targets of every term's weighted gradient norm (w.r.t. the
    optimized image) vs iterations, log y — where AS's norm nears the matching term's, AS steers."""
    curves = grad_norm_curves(groups)
    if not curves:
        return False
    columns = min(4, len(curves))
    rows = -(-len(curves) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows + 0.4), dpi=110, squeeze=False,
                             sharex=True, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    terms = sorted(dict.fromkeys(name for _, medians in curves.values() for name in medians), key=lambda n: n != "matching")
    for ax, ((series, x), (steps, medians)) in zip(axes.flat, curves.items()):
        for name, values in medians.items():
            positive = np.where(values > 0, values, np.nan)
            if np.isfinite(positive).any():
                ax.plot(steps, positive, color=colors[terms.index(name) % len(colors)], label=name)
        ax.set_yscale("log")
        ax.set_title(_name(series, x), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("iteration")
    for ax in axes[:, 0]:
        ax.set_ylabel("‖weighted ∇ term‖", fontsize=8)
    handles = [plt.Line2D([], [], color=colors[i % len(colors)]) for i in range(len(terms))]
    fig.legend(handles, terms, loc="upper center", ncol=len(terms), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.6 * rows + 0.4)))
    fig.savefig(path)
    plt.close(fig)
    return True


def save_labelled_grid(path: str, rows: list[tuple[str, np.ndarray]]) -> None:
    """Rows of (name, (N, H, W, C) [0, 1] images) as one PNG with the names on the left."""
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
