"""Paired statistics of an arm against its baseline over shared targets (reports, summaries).

Every target is attacked by both arms, so the unit of comparison is the per-target difference
treatment − baseline: its mean with a percentile-bootstrap confidence interval (resampling targets),
its median, a two-sided Wilcoxon signed-rank test and the count of targets better / worse, and a
verdict that needs both the interval and the test to agree. Where one report compares several arms
with the same baseline, their p-values of one metric are a family: `adjust_family` adds Holm's
adjusted p, which the verdict then reads, so that the chance of any false gain or loss in the family
stays below SIGNIFICANCE.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

SIGNIFICANCE = 0.05      # Wilcoxon level a verdict of gain / loss needs (with a CI excluding 0)
MIN_TARGETS = 6          # fewer pairs can never reach it: a two-sided signed-rank p is at least 2 / 2**n
BOOTSTRAP_BATCH = 1000   # resamples scipy evaluates at once (bounds memory for long traces)
RESAMPLES = 10000        # bootstrap resamples, and the seed of their draws, unless a caller says otherwise
SEED = 0


def bootstrap_mean_ci(values, *, confidence: float = 0.95, resamples: int = RESAMPLES,
                      seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI of the mean over axis 0 (targets) of `values` (n, ...).

    scipy.stats.bootstrap; each resample draws n targets with replacement, the same draws for every
    trailing entry (a whole trace (n, steps) is resampled as one); deterministic by `seed`. Returns
    (low, high) with the trailing shape; NaN where n < 2.
    """
    values = np.asarray(values, float)
    if values.shape[0] < 2:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan.copy()
    ci = stats.bootstrap((values,), np.mean, axis=0, vectorized=True, n_resamples=resamples,
                         batch=BOOTSTRAP_BATCH, confidence_level=confidence, method="percentile",
                         rng=np.random.default_rng(seed)).confidence_interval
    return np.asarray(ci.low), np.asarray(ci.high)


def bootstrap_median_ci(values, *, confidence: float = 0.95, resamples: int = RESAMPLES,
                        seed: int = SEED) -> tuple[float, float]:
    """Percentile-bootstrap CI of the median of every entry of `values` (n targets, k images each),
    resampling whole targets (the images of one batch are not independent); deterministic by `seed`.
    NaN where n < 2."""
    values = np.asarray(values, float).reshape(len(values), -1)
    if len(values) < 2:
        return np.nan, np.nan
    ci = stats.bootstrap((np.arange(len(values)),), lambda idx: np.median(values[idx.astype(int)]),
                         vectorized=False, n_resamples=resamples, confidence_level=confidence,
                         method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def wilcoxon_p(differences) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the differences (zeros dropped); NaN when fewer than
    two differences or all are zero. scipy's exact distribution for small n without ties."""
    d = np.asarray(differences, float)
    d = d[np.isfinite(d)]
    if len(d) < 2 or not np.any(d != 0):
        return float("nan")
    return float(stats.wilcoxon(d, alternative="two-sided").pvalue)


def paired_stats(treatment, baseline, *, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Statistics of treatment − baseline over paired targets (order-matched 1-d arrays).

    Pairs where either value is not finite are dropped. Returns n, mean, median, ci_low, ci_high (the
    `confidence` percentile-bootstrap interval of the mean; NaN for n < 2), p_value (two-sided
    Wilcoxon signed-rank; NaN for n < 2 or all differences 0), better / worse (targets with a
    positive / negative difference) and confidence.
    """
    t, b = np.asarray(treatment, float).ravel(), np.asarray(baseline, float).ravel()
    if t.shape != b.shape:
        raise ValueError(f"paired values need the same length, got {len(t)} and {len(b)}")
    d = (t - b)[np.isfinite(t) & np.isfinite(b)]
    low, high = bootstrap_mean_ci(d, confidence=confidence, resamples=resamples, seed=seed)
    nan = float("nan")
    return {"n": len(d), "mean": float(d.mean()) if len(d) else nan, "median": float(np.median(d)) if len(d) else nan,
            "ci_low": float(low), "ci_high": float(high), "p_value": wilcoxon_p(d),
            "better": int((d > 0).sum()), "worse": int((d < 0).sum()), "confidence": confidence}


def shared_targets(treatment: dict, baseline: dict, metric: str = "psnr") -> tuple[np.ndarray, np.ndarray]:
    """`metric` of the targets both {target: record} maps hold (results.by_target), in sorted target
    order, as the order-matched arrays paired_stats takes; NaN where a record lacks the metric."""
    common = sorted(set(treatment) & set(baseline))
    return (np.array([treatment[t].get(metric, np.nan) for t in common], float),
            np.array([baseline[t].get(metric, np.nan) for t in common], float))


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of a family (step-down: the k-th smallest of the m finite
    p-values times m - k + 1, made non-decreasing, at most 1); NaN entries stay NaN and do not count."""
    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    out[order] = np.minimum(1.0, np.maximum.accumulate((len(order) - np.arange(len(order))) * p[order]))
    return out


def adjust_family(family: list[dict]) -> None:
    """Adds "p_holm" (Holm-adjusted over `family`) and "family_size" to each paired_stats dict in place."""
    for s, adjusted in zip(family, holm([s["p_value"] for s in family])):
        s["p_holm"], s["family_size"] = float(adjusted), len(family)


def verdict(s: dict) -> str:
    """The reading of a paired_stats dict: "gain" / "loss" when the CI lies above / below 0 and the
    Wilcoxon p < SIGNIFICANCE (Holm's adjusted p where adjust_family added it); "no gain beyond noise"
    when the CI contains 0 and p >= SIGNIFICANCE (or every difference is 0); "inconclusive" when the
    CI and the test disagree (e.g. one outlying target moves the mean, or a significant single test
    does not survive the family's adjustment); "too few targets" below MIN_TARGETS pairs, where no
    outcome could be significant."""
    if s["n"] < MIN_TARGETS:
        return "too few targets"
    significant = bool(s.get("p_holm", s["p_value"]) < SIGNIFICANCE)   # NaN (all differences 0) is not
    if s["ci_low"] > 0 or s["ci_high"] < 0:
        return ("gain" if s["ci_low"] > 0 else "loss") if significant else "inconclusive"
    return "inconclusive" if significant else "no gain beyond noise"


def failure_rate(values, threshold: float) -> float:
    """Share of values below `threshold` (e.g. targets under 15 dB PSNR); a NaN value (a failed attack)
    counts as a failure. NaN for no values."""
    v = np.asarray(values, float).ravel()
    if not len(v):
        return float("nan")
    return float(np.mean(~(v >= threshold)))


def format_delta(s: dict, digits: int = 2) -> str:
    """A paired_stats dict as "+0.52 [+0.10, +0.95], med +0.40, 5↑/1↓" (mean [CI], median, targets
    better/worse); "–" with no pairs."""
    if not s["n"]:
        return "–"
    ci = "" if np.isnan(s["ci_low"]) else f" [{s['ci_low']:+.{digits}f}, {s['ci_high']:+.{digits}f}]"
    return f"{s['mean']:+.{digits}f}{ci}, med {s['median']:+.{digits}f}, {s['better']}↑/{s['worse']}↓"


def format_p(p: float) -> str:
    """A p-value with 2 significant digits ("–" for NaN)."""
    return "–" if np.isnan(p) else f"{p:.2g}"


def format_tested(s: dict) -> str:
    """The Wilcoxon p of a paired_stats dict, and Holm's adjusted p when its family has more than one
    member: "0.012", "0.012 (Holm 0.036)"."""
    if s.get("family_size", 1) > 1:
        return f"{format_p(s['p_value'])} (Holm {format_p(s['p_holm'])})"
    return format_p(s["p_value"])
