"""Report building: cells, paired differences, tables and plots from records; clear errors on bad input."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from gipip_jax import cli, report, results


def _record(attack_id, kind, target, psnr, ssim, setting_label=""):
    return {"attack": f"study:{kind}", "attack_id": attack_id, "dataset": "cifar10", "split": "test",
            "model": "convnet_tiny", "victim": {"epochs": 0}, "target_indices": [target], "labels": [0],
            "batch_size": 1, "iterations": 10, "restart": 0, "restarts": 1, "status": "ok", "loss": 0.5,
            "setting": {"tv_weight": 1e-6, "as_weight": 1e-4 if kind == "gipip" else 0.0},
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
    deltas = report.paired_differences(groups, "IG", "psnr")
    np.testing.assert_allclose(deltas[("GI-PIP", 3.8)], (0.5, 0.5, 2))   # diffs +1 and 0
    header, rows = report.table(manifest, groups)
    assert header[-2:] == ["ΔPSNR vs IG", "ΔSSIM vs IG"]
    assert rows[1][:3] == ["3.8", "GI-PIP", "2 / 2"] and rows[1][3] == "12.500 ± 1.500"


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


def test_report_of_nothing_or_a_broken_manifest_is_one_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "has neither results.jsonl" in capsys.readouterr().err
    (tmp_path / "experiment.json").write_text("{not json")
    with pytest.raises(report.ReportError, match="not a valid experiment manifest"):
        report.load(str(tmp_path))
    (tmp_path / "experiment.json").write_text(json.dumps({"studies": [{"dir": "missing"}]}))
    with pytest.raises(report.ReportError, match="no finished attacks"):
        report.load(str(tmp_path))
