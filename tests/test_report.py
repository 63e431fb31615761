"""Report building: cells, paired differences, tables and plots from records; clear errors on bad input."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from gipip_jax import cli, report, report_plots, results


def _record(attack_id, kind, target, psnr, ssim, setting_label="", as_offset=0.001, **extra):
    return {**extra, "attack": f"study:{kind}", "attack_id": attack_id, "dataset": "cifar10", "split": "test",
            "model": "convnet_tiny", "victim": {"epochs": 0}, "target_indices": [target], "labels": [0],
            "batch_size": 1, "iterations": 10, "restart": 0, "restarts": 1, "status": "ok", "loss": 0.5,
            "setting": {"tv_weight": 1e-6, "as_weight": 1e-4 if kind == "gipip" else 0.0, "as_offset": as_offset},
            "setting_label": setting_label, "psnr": psnr, "ssim": ssim, "label_accuracy": 1.0,
            "per_image": {"order": [0]}, "config": {"data": {"name": "cifar10", "image_size": 8}}}


def _write_study(folder, records):
    os.makedirs(folder, exist_ok=True)
    for r in records:
        results.append_record(os.path.join(folder, "results.jsonl"), r)


def test_paired_differences_pair_each_target_with_its_baseline_record(tmp_path):
    _write_study(tmp_path / "ig", [_record(0, "ig", 0, 10.0, 0.1), _record(1, "ig", 1, 14.0, 0.3)])
    _write_study(tmp_path / "ae", [_record(0, "gipip", 0, 11.0, 0.2), _record(1, "gipip", 1, 14.0, 0.2)])
    manifest = {"baseline": "IG", "x_label": "aux", "studies": [
        {"dir": "ig", "x": None, "series": "IG (CIFAR-10)"}, {"dir": "ae", "x": 3.8, "series": "GI-PIP"}]}
    (tmp_path / "experiment.json").write_text(json.dumps(manifest))
    _, records = report.load(str(tmp_path))
    groups = report.cells(records)
    assert set(groups) == {("IG (CIFAR-10)", None), ("GI-PIP", 3.8)}
    paired = report.pairs(manifest, groups)
    assert [(t["psnr"], b["psnr"]) for t, b in paired[("GI-PIP", 3.8)]] == [(11.0, 10.0), (14.0, 14.0)]
    header, rows, notes = report.table(manifest, groups)
    assert header[-4:-2] == ["ΔPSNR vs IG: mean [95 % CI], median, better/worse", "ΔPSNR p (Wilcoxon)"]
    assert rows[1][:6] == ["3.8", "GI-PIP", "2 / 2", "12.500 ± 1.500", "12.500", "100%"]
    assert rows[1][-4:-2] == ["+0.50 [+0.00, +1.00], med +0.50, 1↑/0↓", "1"]   # zeros dropped: one difference, p = 1
    assert rows[1][-2].endswith("†") and notes   # no ssim_padded in these records: dm-pix SSIM, marked
    [line] = report.verdicts(manifest, report.comparisons(paired))
    assert line.startswith("GI-PIP, 3.8, against IG on 2 paired targets: PSNR: too few targets (Δ +0.50 "
                           "[+0.00, +1.00], med +0.50, 1↑/0↓, p 1); SSIM (dm-pix): ")


def test_arms_differing_only_in_as_offset_are_two_cells(tmp_path):
    study = []
    for t in range(3):
        study.append(_record(10 * t, "ig", t, 12.0 + t, 0.1, as_offset=0.001))
        for c, gain in ((0.001, 1.0), (0.01, -1.0)):
            study.append(_record(10 * t + 1 + (c > 0.005), "gipip", t, 12.0 + t + gain, 0.1, as_offset=c))
    _write_study(tmp_path / "s", study)
    _, records = report.load(str(tmp_path / "s"))   # a single study: x from the setting label
    groups = report.cells(records)
    assert list(groups) == [("IG", "default"), ("GI-PIP", "as_offset=0.001"), ("GI-PIP", "as_offset=0.01")]
    paired = report.pairs({}, groups)   # no manifest baseline: the λ_AS = 0 arm of the same study
    assert set(paired) == {("GI-PIP", "as_offset=0.001"), ("GI-PIP", "as_offset=0.01")}
    header, rows, _ = report.table({}, groups)
    assert "ΔPSNR vs λ_AS = 0: mean [95 % CI], median, better/worse" in header
    assert rows[1][-4].startswith("+1.00 [+1.00, +1.00], med +1.00, 3↑/0↓")
    assert rows[2][-4].startswith("-1.00 [-1.00, -1.00], med -1.00, 0↑/3↓") and rows[2][-3] == "0.25 (Holm 0.5)"
    # with x given by a manifest, the differing field goes into the series
    (tmp_path / "experiment.json").write_text(json.dumps({"studies": [{"dir": "s", "x": "bs 1"}]}))
    _, records = report.load(str(tmp_path))
    assert list(report.cells(records)) == [("IG", "bs 1"), ("GI-PIP (as_offset=0.001)", "bs 1"),
                                          ("GI-PIP (as_offset=0.01)", "bs 1")]


def test_the_papers_ssim_sits_next_to_the_authors_ssim(tmp_path):
    records = [_record(0, "ig", 0, 10.0, 0.1, ssim_padded=0.15), _record(1, "gipip", 0, 11.0, 0.2, ssim_padded=0.3)]
    _write_study(tmp_path / "s", records)
    manifest = {"studies": [{"dir": "s", "x": "bs 1"}], "baseline": "IG",
                "paper": [{"series": "GI-PIP", "x": "bs 1", "metric": "ssim", "value": 0.53}]}
    (tmp_path / "experiment.json").write_text(json.dumps(manifest))
    _, records = report.load(str(tmp_path))
    groups = report.cells(records)
    header, rows, notes = report.table(manifest, groups)
    column = header.index("paper SSIM (authors', zero-padded)")
    assert header[column - 1] == "SSIM (authors', zero-padded)" and header[column - 2] == "SSIM (dm-pix)"
    assert rows[1][column - 1:column + 1] == ["0.300 ± 0.000", "0.53"]
    assert rows[1][-2].startswith("+0.150") and not notes   # the SSIM difference is the authors' SSIM
    assert report.plot_metric(manifest, groups, "ssim_padded", str(tmp_path / "ssim_padded.png"))


def _trace(psnr, norms):
    return {"steps": [0, 10, 20], "psnr": psnr, "terms": {"matching": [1.0, 0.5, 0.2]},
            "grad_norms": {"matching": [1.0, 0.5, 0.1], **norms}}


def test_gap_and_gradient_norm_plots_from_traces(tmp_path, monkeypatch):
    study = []
    for t in range(3):
        ig = _record(2 * t, "ig", t, 12.0, 0.1)
        ig["trace"] = _trace([10.0, 11.0, 12.0], {"anomaly": [0.0, 0.0, 0.0]})
        gipip = _record(2 * t + 1, "gipip", t, 14.0, 0.1)
        gipip["trace"] = _trace([10.0, 12.0 + 0.1 * t, 14.0], {"anomaly": [0.01, 0.05, 0.2]})
        study += [ig, gipip]
    _write_study(tmp_path, study)
    manifest, records = report.load(str(tmp_path))
    groups = report.cells(records)
    steps, mean, low, high, n = report_plots.gap_curves(report.pairs(manifest, groups))[("GI-PIP", "default")]
    assert steps.tolist() == [0, 10, 20] and n == 3
    np.testing.assert_allclose(mean, [0.0, 1.1, 2.0])
    assert low[1] < 1.1 < high[1] and low[2] == high[2] == 2.0
    norms = report_plots.grad_norm_curves(groups)
    np.testing.assert_allclose(norms[("GI-PIP", "default")][1]["anomaly"], [0.01, 0.05, 0.2])
    header, rows, notes = report.table(manifest, groups)
    steering = header.index(report.STEERING)   # IG has AS switched off; GI-PIP's ratios are 0.01, 0.1, 2
    assert [row[steering] for row in rows] == ["–", "2.0e+00, 2.0e+00"] and report.STEERING in notes[-1]
    assert report_plots.steering_share([{**study[1], "trace": _trace([0, 0, 0], {"anomaly": [0.5, 0.25, 0.01]})}]) \
        == pytest.approx((0.1, 0.5))
    monkeypatch.setattr(report, "image_grids", lambda *args: [])   # no dataset needed
    paths = report.build(str(tmp_path))
    assert [os.path.basename(p) for p in paths["traces"]] == ["gap_vs_iterations.png", "grad_norms.png"]
    for p in paths["traces"]:
        assert Image.open(p).size[0] > 300
    text = (tmp_path / "report.md").read_text()
    assert "report/gap_vs_iterations.png" in text
    assert "## Verdict" in text and "GI-PIP, default, against λ_AS = 0 on 3 paired targets: PSNR: too few targets" in text
    for r in study:   # records without traces: both plots skipped silently
        del r["trace"]
    os.remove(tmp_path / "results.jsonl")
    _write_study(tmp_path, study)
    assert report.build(str(tmp_path))["traces"] == []


def test_plots_are_written_for_numeric_and_categorical_x(tmp_path):
    _write_study(tmp_path / "s", [_record(0, "ig", 0, 10.0, 0.1, "noise_std=0.01"), _record(1, "gipip", 0, 12.0, 0.2)])
    manifest = {"studies": [{"dir": "s"}], "paper": [{"series": "IG", "x": "noise_std=0.01", "metric": "ssim", "value": 0.3}]}
    (tmp_path / "experiment.json").write_text(json.dumps(manifest))
    _, records = report.load(str(tmp_path))
    groups = report.cells(records)
    assert set(groups) == {("IG", "noise_std=0.01"), ("GI-PIP", "default")}
    path = tmp_path / "ssim.png"
    assert report.plot_metric(manifest, groups, "ssim", str(path))
    assert Image.open(path).size[0] > 100
    assert not report.plot_metric(manifest, groups, "lpips", str(tmp_path / "lpips.png"))   # no values: no plot


def test_image_grids_show_every_target_with_titles_naming_what_they_show(tmp_path, monkeypatch):
    study = [_record(2 * t + arm, kind, t, 10.0, 0.1) for t in range(7) for arm, kind in enumerate(("ig", "gipip"))]
    _write_study(tmp_path, study)
    os.makedirs(tmp_path / "reconstructions")
    ids = np.array([r["attack_id"] for r in study])
    np.savez(tmp_path / "reconstructions" / "wave_00000.npz", ids=ids, images01=np.full((len(ids), 1, 8, 8, 3), 0.5))
    monkeypatch.setattr(report, "ground_truth", lambda r: np.zeros((1, 8, 8, 3)))   # no dataset needed
    monkeypatch.setattr(report, "MAX_GRID_COLUMNS", 3)
    _, records = report.load(str(tmp_path))
    grids = report.image_grids(str(tmp_path), report.cells(records), str(tmp_path))
    assert [title for title, _ in grids] == ["cifar10, batch size 1, targets [0], [1], [2]",
                                             "cifar10, batch size 1, targets [3], [4], [5]",
                                             "cifar10, batch size 1, targets [6]"]
    widths = [Image.open(path).size[0] for _, path in grids]
    assert [os.path.basename(path) for _, path in grids] == ["grid_0.png", "grid_1.png", "grid_2.png"]
    assert widths[0] == widths[1] > widths[2]   # three columns, three, one
    for _, path in grids:
        os.remove(path)
    os.remove(tmp_path / "reconstructions" / "wave_00000.npz")   # records only: no ground-truth-only grids
    monkeypatch.setattr(report, "ground_truth", lambda r: pytest.fail("ground truth loaded for no grid"))
    assert report.image_grids(str(tmp_path), report.cells(records), str(tmp_path)) == []
    assert not any(name.startswith("grid_") for name in os.listdir(tmp_path))


def test_report_of_nothing_or_a_broken_manifest_is_one_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "has neither results.jsonl" in capsys.readouterr().err
    (tmp_path / "experiment.json").write_text("{not json")
    with pytest.raises(report.ReportError, match="not a valid experiment manifest"):
        report.load(str(tmp_path))
    (tmp_path / "experiment.json").write_text(json.dumps({"studies": [{"dir": "missing"}]}))
    with pytest.raises(report.ReportError, match="no finished attacks"):
        report.load(str(tmp_path))


def test_two_studies_of_the_same_targets_pair_arm_by_arm_against_a_baseline_series(tmp_path):
    """Part c of as_claim: the MSE-AE study's λ_AS arms against the reference-AE study's same λ_AS arms."""
    def arm(attack_id, kind, target, psnr, as_weight):
        r = _record(attack_id, kind, target, psnr, 0.1)
        return {**r, "setting": {**r["setting"], "as_weight": as_weight}}
    _write_study(tmp_path / "ref", [arm(10 * t + i, kind, t, 12.0 + i, w) for t in range(3)
                                    for i, (kind, w) in enumerate((("ig", 0.0), ("gipip", 0.01), ("gipip", 0.1)))])
    _write_study(tmp_path / "mse", [arm(10 * t + i, "gipip", t, 12.0 + 2 * i + t, w) for t in range(3)
                                    for i, w in ((1, 0.01), (2, 0.1))])
    manifest = {"baseline": "reference AE", "x_field": "as_weight",
                "studies": [{"dir": "ref", "series": "reference AE"}, {"dir": "mse", "series": "MSE AE"}]}
    (tmp_path / "experiment.json").write_text(json.dumps(manifest))
    _, records = report.load(str(tmp_path))
    groups = report.cells(records)
    assert list(groups) == [("reference AE", w) for w in (0.0, 0.01, 0.1)] + [("MSE AE", 0.01), ("MSE AE", 0.1)]
    paired = report.pairs(manifest, groups)
    assert set(paired) == {("MSE AE", 0.01), ("MSE AE", 0.1)}
    for (_, x), pairs in paired.items():
        assert [(t["target_indices"], b["target_indices"]) for t, b in pairs] == [([t], [t]) for t in range(3)]
        assert all(t["setting"]["as_weight"] == b["setting"]["as_weight"] for t, b in pairs)
    diffs = {x: [t["psnr"] - b["psnr"] for t, b in pairs] for (_, x), pairs in paired.items()}
    assert diffs == {0.01: [1.0, 2.0, 3.0], 0.1: [2.0, 3.0, 4.0]}
    # one arm in a study: still paired by its λ_AS, not by a study-wide "default" label
    (tmp_path / "mse" / "results.jsonl").unlink()
    _write_study(tmp_path / "mse", [arm(10 * t + 1, "gipip", t, 13.0, 0.01) for t in range(3)])
    _, records = report.load(str(tmp_path))
    assert set(report.pairs(manifest, report.cells(records))) == {("MSE AE", 0.01)}


def test_where_selects_arms_so_one_studys_ig_arm_is_the_baseline_of_both_studies(tmp_path):
    """Part c against IG: reference-AE and MSE-AE arms, each paired with the reference study's λ_AS = 0 arm."""
    def arm(attack_id, kind, target, psnr, as_weight):
        r = _record(attack_id, kind, target, psnr, 0.1)
        return {**r, "setting": {**r["setting"], "as_weight": as_weight}}
    _write_study(tmp_path / "ref", [arm(10 * t + i, kind, t, 12.0 + i + t, w) for t in range(3)
                                    for i, (kind, w) in enumerate((("ig", 0.0), ("gipip", 1e-4), ("gipip", 0.1)))])
    _write_study(tmp_path / "mse", [arm(10 * t, "gipip", t, 15.0, 0.1) for t in range(3)])
    manifest = {"baseline": "IG", "x_field": "as_weight",
                "studies": [{"dir": "ref", "series": "IG", "where": {"as_weight": [0.0]}},
                            {"dir": "ref", "series": "reference AE", "where": {"as_weight": 0.1}},
                            {"dir": "mse", "series": "MSE AE"}]}
    (tmp_path / "experiment.json").write_text(json.dumps(manifest))
    _, records = report.load(str(tmp_path))
    groups = report.cells(records)
    assert list(groups) == [("IG", 0.0), ("reference AE", 0.1), ("MSE AE", 0.1)]   # λ_AS 1e-4 left out
    diffs = {series: [t["psnr"] - b["psnr"] for t, b in pairs]
             for (series, _), pairs in report.pairs(manifest, groups).items()}
    assert diffs == {"reference AE": [2.0, 2.0, 2.0], "MSE AE": [3.0, 2.0, 1.0]}
    assert all(b["setting"]["as_weight"] == 0.0 for pairs in report.pairs(manifest, groups).values() for _, b in pairs)
    manifest["studies"][0]["where"] = ["as_weight", 0.0]
    (tmp_path / "experiment.json").write_text(json.dumps(manifest))
    with pytest.raises(report.ReportError, match="where"):
        report.load(str(tmp_path))


def test_the_noise_floor_sentence_reads_the_nearest_measured_budget(tmp_path, monkeypatch):
    measured = tmp_path / "chaos.json"
    spread = lambda m: {"abs_delta_psnr": {"median": m, "mean": m, "p90": 2 * m, "max": 3 * m}}
    measured.write_text(json.dumps({"budgets": {"1000": spread(0.5), "10000": spread(1.25)}}))
    assert "1,000 iterations) moves one target's PSNR by a median 0.50 dB (90th percentile 1.00, max 1.50)" in \
        report.noise_floor(2000, str(measured))
    assert "a median 1.25 dB" in report.noise_floor(8000, str(measured))
    assert report.noise_floor(1000, str(tmp_path / "none.json")) is None
    monkeypatch.setattr(report, "NOISE_FLOOR", str(measured))
    assert "a median 0.50 dB" in report.noise_floor(500)
