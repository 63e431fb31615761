"""The paper-claim experiments' smoke variants, end to end: priors and victims trained, every study
run on real data, the report (markdown, HTML, plots, image grids) written and non-empty."""

import json
import os

import pytest
from PIL import Image

from gipip_jax.results import read_records


@pytest.mark.slow
@pytest.mark.parametrize("name, studies, plots", [("aux_amount", 6, 2), ("ood", 6, 2), ("paper_bars", 5, 2)])
def test_smoke_variant_runs_end_to_end_and_reports(driver, tmp_path, name, studies, plots):
    paths = driver(name).run("smoke", str(tmp_path))
    manifest = json.loads((tmp_path / "experiment.json").read_text())
    assert len(manifest["studies"]) == studies
    for entry in manifest["studies"]:
        records = read_records(os.path.join(tmp_path, entry["dir"], "results.jsonl"))
        assert records and all(r["status"] == "ok" for r in records), entry
    text = (tmp_path / "report.md").read_text()
    assert text.count("\n|") >= studies + 1 and "report/psnr.png" in text
    assert "<table>" in (tmp_path / "report.html").read_text()
    assert len(paths["plots"]) == plots and paths["grids"]
    for png in paths["plots"] + paths["grids"]:
        width, height = Image.open(png).size
        assert width > 100 and height > 100


def test_unknown_variant_is_refused(driver):
    with pytest.raises(SystemExit, match="unknown variant 'huge'"):
        driver("ood").run("huge", "unused")


@pytest.mark.slow
def test_as_claim_smoke_pairs_arms_and_plots_the_traces(driver, tmp_path):
    """issue 14's driver: reference and MSE AEs trained, train-split targets skip the AE's images,
    every record carries a trace, the report has paired statistics and the trace plots."""
    paths = driver("as_claim").run("smoke", str(tmp_path))
    records = read_records(os.path.join(tmp_path, "studies", "tiny_bs2", "results.jsonl"))
    assert len(records) == 4 and all(r["status"] == "ok" and r["trace"]["steps"][-1] == 20 for r in records)
    batches = {tuple(r["target_indices"]) for r in records}   # two disjoint batches of 2, both AEs on them
    assert len(batches) == 2 and len(set().union(*batches)) == 4
    mse = read_records(os.path.join(tmp_path, "studies", "tiny_bs2_mse", "results.jsonl"))
    assert {tuple(r["target_indices"]) for r in mse} == batches
    assert all(r["victim"]["init"] == "torch" and r["split"] == "train" for r in records)
    prior = json.loads((tmp_path / "priors" / "cifar10_reference" / "ae" / "metadata.json").read_text())
    assert prior["recipe"] == "bce_adadelta"
    text = (tmp_path / "report.md").read_text()
    assert "95 % CI" in text and "Wilcoxon" in text and "gap_vs_iterations.png" in text
    assert len(paths["traces"]) == 2
    compared = (tmp_path / "ae_tiny_bs2_mse" / "report.md").read_text()   # part c: MSE AE arm vs reference AE arm
    assert "ΔPSNR vs reference AE" in compared and "MSE AE" in compared
    against_ig = (tmp_path / "ae_tiny_bs2_mse_vs_ig" / "report.md").read_text()   # both AEs' arms vs IG
    assert "ΔPSNR vs IG" in against_ig and "reference AE" in against_ig and "MSE AE" in against_ig


@pytest.mark.slow
def test_as_map_smoke_trains_aes_to_targets_and_reports_both_parts(driver, tmp_path):
    """issue 34's driver: AEs stopped at a target held-out error, one GI-PIP study per AE on IG's
    batches and keys, the two pre-specified contrasts, and the batch-size table."""
    summary = driver("as_map").run("smoke", str(tmp_path))
    aes = {a["name"]: a for a in summary["aes"]}
    assert aes["mse_2c"]["reached"] and aes["mse_2c"]["epochs"] < 3   # stopped at its target, early
    assert aes["mse_2c"]["heldout_mse"] <= aes["mse_2c"]["target"]
    batches = {tuple(r["target_indices"]) for r in read_records(os.path.join(tmp_path, "studies", "dose_ig",
                                                                              "results.jsonl"))}
    for name in aes:
        records = read_records(os.path.join(tmp_path, "studies", f"dose_{name}", "results.jsonl"))
        assert {tuple(r["target_indices"]) for r in records} == batches and len(batches) == 2
    assert summary["dose_verdict"] == ["- Verdict: undecided at n = 2 (error contrast: too few targets; recipe "
                                       "contrast: too few targets)."]
    dose = (tmp_path / "dose_response.md").read_text()
    assert "GI-PIP with mse_c − GI-PIP with mse_2c" in dose and "Verdict: undecided at n = 2" in dose
    sizes = (tmp_path / "batch_size.md").read_text()
    assert "| 1 | 0.1 |" in sizes and "| 2 | 0.1 |" in sizes and "GI-PIP with bce_c − GI-PIP with mse_c" in dose and (tmp_path / "batch_size" / "report.md").exists()


def test_driver_bad_input_is_one_error_line_and_leaves_no_workdir(driver, tmp_path, monkeypatch, capsys):
    """Run from outside the repository, the cpu variant finds no shipped AE: one line, exit status 2,
    and the work directory it would have created is not left behind."""
    from gipip_jax import experiment

    as_claim = driver("as_claim")
    monkeypatch.chdir(tmp_path)
    assert experiment.main(as_claim.run, as_claim.__doc__, "as_claim", ["cpu", "new/W"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gipip-jax: error: ") and err.count("\n") == 1 and "ae_cifar10_aux5" in err
    assert not (tmp_path / "new").exists()


def test_heldout_count_is_the_ae_configs_for_every_variant():
    from gipip_jax import configs, experiment

    assert experiment.heldout_count("smoke") == configs.load_config(f"{experiment.AE_CONFIG}:smoke").heldout_count == 64
    for name in ("cpu", "full"):
        assert experiment.heldout_count(name) == configs.load_config(experiment.AE_CONFIG).heldout_count == 1000

