"""Paired statistics: bootstrap CI of the mean difference, Wilcoxon p, verdict, failure rate."""

import numpy as np
import pytest

from gipip_jax import paired


def test_a_consistent_gain_has_a_ci_above_zero_and_a_small_p():
    rng = np.random.default_rng(1)
    baseline = rng.normal(12.0, 2.0, 20)
    s = paired.paired_stats(baseline + 1.0 + rng.normal(0, 0.1, 20), baseline)
    assert s["n"] == 20 and s["better"] == 20 and s["worse"] == 0
    assert 0.9 < s["mean"] < 1.1 and 0.9 < s["median"] < 1.1
    assert 0 < s["ci_low"] < s["mean"] < s["ci_high"] < 1.2
    assert s["p_value"] < 1e-5   # exact: 2 / 2**20


def test_symmetric_differences_have_a_ci_around_zero_and_a_large_p():
    d = np.array([-3.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0])
    s = paired.paired_stats(10.0 + d, np.full(8, 10.0))
    assert s["mean"] == pytest.approx(0.0, abs=1e-12) and s["better"] == 4 and s["worse"] == 4
    assert s["ci_low"] < 0 < s["ci_high"]
    assert s["p_value"] == pytest.approx(1.0)


def test_wilcoxon_p_matches_the_exact_distribution_by_hand():
    # n = 4, ranks 1..4, W- = 2 (only the difference -2 is negative). Of the 2^4 equally likely sign
    # patterns, 3 have W- <= 2 ({}, {1}, {2}); two-sided p = 2 * 3/16.
    assert paired.paired_stats([1.0, -2.0, 3.0, 4.0], [0.0] * 4)["p_value"] == pytest.approx(6 / 16)
    # all three positive: W- = 0, p = 2 * 1/8
    assert paired.wilcoxon_p([0.5, 1.0, 2.0]) == pytest.approx(0.25)


def test_degenerate_inputs_give_nan_not_errors():
    one = paired.paired_stats([1.0], [0.0])
    assert one["n"] == 1 and one["mean"] == 1.0 and np.isnan(one["ci_low"]) and np.isnan(one["p_value"])
    zeros = paired.paired_stats([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert zeros["mean"] == 0.0 and np.isnan(zeros["p_value"]) and zeros["ci_low"] == zeros["ci_high"] == 0.0
    empty = paired.paired_stats([], [])
    assert empty["n"] == 0 and np.isnan(empty["mean"])
    dropped = paired.paired_stats([1.0, np.nan, 3.0], [0.0, 0.0, 1.0])   # the NaN pair is dropped
    assert dropped["n"] == 2 and dropped["mean"] == 1.5
    with pytest.raises(ValueError, match="same length"):
        paired.paired_stats([1.0, 2.0], [1.0])


def test_bootstrap_is_deterministic_by_seed_and_resamples_whole_rows():
    rng = np.random.default_rng(0)
    traces = rng.normal(0, 1, (12, 5))
    a = paired.bootstrap_mean_ci(traces, seed=3)
    b = paired.bootstrap_mean_ci(traces, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (5,) and np.all(a[0] < traces.mean(0)) and np.all(traces.mean(0) < a[1])
    low, high = paired.bootstrap_mean_ci(traces[:, 2], seed=3)   # same draws column by column
    assert low == pytest.approx(a[0][2]) and high == pytest.approx(a[1][2])


def test_failure_rate_counts_values_below_the_threshold_and_nan():
    assert paired.failure_rate([10.0, 14.9, 15.0, 20.0], 15.0) == 0.5
    assert paired.failure_rate([16.0, np.nan], 15.0) == 0.5
    assert np.isnan(paired.failure_rate([], 15.0))


def test_verdict_needs_the_ci_and_the_test_to_agree():
    rng = np.random.default_rng(2)
    baseline = rng.normal(15.0, 3.0, 12)
    assert paired.verdict(paired.paired_stats(baseline + 1.0 + rng.normal(0, 0.2, 12), baseline)) == "gain"
    assert paired.verdict(paired.paired_stats(baseline - 1.0 + rng.normal(0, 0.2, 12), baseline)) == "loss"
    symmetric = np.array([-3.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0])
    assert paired.verdict(paired.paired_stats(10.0 + symmetric, np.full(8, 10.0))) == "no gain beyond noise"
    # 6 targets gain 2 dB, 4 lose 0.1 dB: the mean's CI is well above 0, but the 4 losses take the ranks
    # 1-4 (W- = 10 of 55, two-sided p ~ 0.08): the rank test does not agree
    mixed = paired.paired_stats(10.0 + np.array([2.0] * 6 + [-0.1] * 4), np.full(10, 10.0))
    assert mixed["ci_low"] > 0.3 and 0.05 < mixed["p_value"] < 0.1
    assert paired.verdict(mixed) == "inconclusive"
    assert paired.verdict(paired.paired_stats([1.0] * 6, [1.0] * 6)) == "no gain beyond noise"   # all equal
    # 5 targets, all better: the smallest two-sided p of 5 pairs is 2 / 32 > 0.05
    few = paired.paired_stats([11.0, 12.2, 13.1, 14.0, 15.5], [10.0, 11.0, 12.0, 13.0, 14.0])
    assert few["ci_low"] > 0 and few["p_value"] == pytest.approx(2 / 32)
    assert paired.verdict(few) == "too few targets"


def test_holm_adjusts_a_family_step_down_and_keeps_nan():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> non-decreasing 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(paired.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(paired.holm([0.2, np.nan, 0.6]), [0.4, np.nan, 0.6])   # NaN is not a member
    assert paired.holm([0.9, 0.8]).max() == 1.0 and paired.holm([0.03])[0] == 0.03


def test_a_gain_that_does_not_survive_its_family_is_inconclusive():
    rng = np.random.default_rng(3)
    baseline = rng.normal(15.0, 3.0, 8)
    gain = paired.paired_stats(baseline + 1.0 + rng.normal(0, 0.2, 8), baseline)   # all 8 better: p = 2 / 256
    nulls = [paired.paired_stats(baseline + d, baseline) for d in ([-1.0, 1.0] * 4, [0.5, -0.5] * 4)]
    assert gain["p_value"] < 0.01 and paired.verdict(gain) == "gain"
    paired.adjust_family([gain, *nulls])
    assert gain["p_holm"] == pytest.approx(3 * gain["p_value"]) and gain["family_size"] == 3
    assert paired.verdict(gain) == "gain" and paired.format_tested(gain) == "0.0078 (Holm 0.023)"
    paired.adjust_family([gain, *[dict(nulls[0]) for _ in range(6)]])   # 7 arms: 7 * 2 / 256 = 0.055
    assert gain["p_holm"] > 0.05 and paired.verdict(gain) == "inconclusive"
    assert paired.format_tested(paired.paired_stats(baseline + [-1.0, 1.0] * 4, baseline)) == "1"   # not adjusted


def test_median_ci_resamples_whole_targets_and_is_fixed_by_its_seed():
    rng = np.random.default_rng(3)
    values = rng.normal(15, 3, (16, 4))
    low, high = paired.bootstrap_median_ci(values)
    assert low < np.median(values) < high
    assert paired.bootstrap_median_ci(values) == (low, high)
    # one target's images drawn together: a target of 4 equal values moves the median in steps of a target
    blocks = np.repeat(np.arange(16.0)[:, None], 4, axis=1)
    low, high = paired.bootstrap_median_ci(blocks)
    assert 2 * low == int(2 * low) and 2 * high == int(2 * high)   # medians of whole targets: n or n + 0.5
    assert np.isnan(paired.bootstrap_median_ci(values[:1])).all()


def test_shared_targets_pairs_only_the_targets_both_arms_hold_in_target_order():
    from gipip_jax.results import by_target

    treatment = by_target([{"target_indices": [t], "status": "ok", "psnr": float(t)} for t in (3, 1, 2)]
                          + [{"target_indices": [5], "status": "failed"}])
    baseline = by_target([{"target_indices": [t], "status": "ok", "psnr": 10.0 + t} for t in (1, 2, 4)],
                         keep=lambda r: r["target_indices"] != [4])
    assert sorted(treatment) == [(1,), (2,), (3,)] and sorted(baseline) == [(1,), (2,)]
    a, b = paired.shared_targets(treatment, baseline)
    np.testing.assert_array_equal(a, [1.0, 2.0])
    np.testing.assert_array_equal(b, [11.0, 12.0])
    a, _ = paired.shared_targets(treatment, baseline, "ssim")   # a metric the records lack: NaN, dropped by paired_stats
    assert np.isnan(a).all() and paired.paired_stats(a, b)["n"] == 0


def test_convergence_report_pairs_the_budgets_per_target(tmp_path):
    from gipip_jax import experiment

    long = {(t,): {"psnr": 20.0 + t} for t in range(4)}
    short = {(t,): {"psnr": 18.0 + t} for t in range(4)}
    text = experiment.write_convergence(str(tmp_path / "convergence.md"),
                                        [("this vs half", long, short), ("one target only", long, {(0,): {"psnr": 1.0}})])
    assert "- this vs half, 4 shared targets: ΔPSNR +2.00 dB [+2.00, +2.00]" in text
    assert "mean 21.50 vs 19.50 dB; at or above 20 dB: 4 vs 2." in text and "one target only" not in text
    assert (tmp_path / "convergence.md").read_text() == text + "\n"
