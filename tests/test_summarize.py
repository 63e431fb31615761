"""The summary table: grouping by every grid field, best restart per target, paired statistics."""

import pytest

from gipip_jax import summarize


def record(target, restart, loss, psnr, as_weight=0.0, status="ok", matching=None, as_offset=0.001, selection=None,
           ssim_padded=None):
    r = {"attack": "study:gipip" if as_weight else "study:ig", "model": "convnet", "batch_size": 1, "iterations": 10,
         "dataset": "cifar10", "target_indices": [target], "restart": restart,
         "setting": {"tv_weight": 1e-6, "as_weight": as_weight, "as_offset": as_offset, "noise_std": 0.0},
         "setting_label": "", "status": status, "loss": loss, "psnr": psnr, "ssim": psnr / 100,
         "terms": {"matching": loss if matching is None else matching, "tv": 1.0},
         "config": {"data": {"name": "cifar10"}, "attack": {"iterations": 10}}}
    if selection:
        r["config"]["attack"]["restart_selection"] = selection
    if ssim_padded is not None:
        r["ssim_padded"] = ssim_padded
    return r


def test_best_restart_per_target_is_the_lowest_matching_term():
    records = [record(0, 0, 0.5, 10.0), record(0, 1, 0.1, 20.0), record(1, 0, 0.2, 30.0),
               record(1, 1, float("nan"), 0.0, status="failed")]
    best = summarize.best_restarts(records)
    assert sorted(r["psnr"] for r in best) == [20.0, 30.0]
    row = summarize.table(records).splitlines()[2]
    assert "| 2 / 2 |" in row and "25.000 ± 5.000" in row


@pytest.mark.parametrize("selection, kept", [(None, 10.0), ("matching", 10.0), ("objective", 20.0)])
def test_restart_selection_matching_or_objective(selection, kept):
    # restart 1 has the lower objective but the higher matching term
    records = [record(0, 0, 0.5, 10.0, matching=0.01, selection=selection),
               record(0, 1, 0.2, 20.0, matching=0.05, selection=selection)]
    assert [r["psnr"] for r in summarize.best_restarts(records)] == [kept]


def test_settings_make_separate_rows():
    records = [record(0, 0, 0.5, 10.0), record(0, 0, 0.5, 12.0, as_weight=1e-4)]
    assert len(summarize.table(records).splitlines()) == 4 + 2   # + the † note (no ssim_padded)


def test_arms_differing_only_in_as_offset_stay_two_rows_and_say_so():
    records = [record(t, 0, 0.5, 10.0 + t, as_weight=1e-4, as_offset=c) for t in (0, 1) for c in (0.001, 0.01)]
    assert len(summarize.best_restarts(records)) == 4   # not merged as restarts
    rows = summarize.table(records).splitlines()[2:]
    assert len([r for r in rows if r.startswith("| study")]) == 2
    assert "| as_offset=0.001 |" in rows[0] and "| as_offset=0.01 |" in rows[1]


def test_each_as_arm_is_paired_with_its_as_weight_0_arm():
    records = []
    for t in range(6):
        base = 12.0 + t
        records += [record(t, 0, 0.5, base, ssim_padded=0.2), record(t, 0, 0.5, base + 1.0 + 0.01 * t, as_weight=1e-4,
                                                                    ssim_padded=0.25, as_offset=0.002)]
    pairs = summarize.baseline_pairs(summarize.best_restarts(records))
    assert len(pairs) == 1 and all(b["setting"]["as_weight"] == 0 for _, b in next(iter(pairs.values())))
    stats = summarize.compare(next(iter(pairs.values())))
    assert stats["ssim_padded"] and stats["psnr"]["n"] == 6 and stats["psnr"]["better"] == 6
    assert stats["psnr"]["ci_low"] > 0 and stats["ssim"]["mean"] == pytest.approx(0.05)
    text = summarize.table(records)
    gipip = [line for line in text.splitlines() if line.startswith("| study:gipip")][0]
    assert "+1.03 [+1.01, +1.04], med +1.03, 6↑/0↓ | 0.031 | gain |" in gipip   # exact Wilcoxon: 2 / 2**6
    assert "| 50% |" in text.splitlines()[2] and "†" not in text           # 12, 13, 14 of 12..17 below 15 dB


def test_the_label_column_reads_given_where_labels_were_given_and_the_accuracy_where_recovered():
    given = [dict(record(t, 0, 0.1, 20.0), label_source="given", label_accuracy=1.0) for t in range(2)]
    recovered = [dict(record(t, 0, 0.1, 20.0), label_source="idlg", label_accuracy=a) for t, a in ((0, 1.0), (1, 0.0))]
    header, row = (summarize.table(given).splitlines()[i].split(" | ") for i in (0, 2))
    assert row[header.index("label_accuracy")] == "given"
    header, row = (summarize.table(recovered).splitlines()[i].split(" | ") for i in (0, 2))
    assert row[header.index("label_accuracy")] == "0.500 ± 0.500"
