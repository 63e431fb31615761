"""The paper-claim experiments' smoke variants, end to end: priors and victims trained, every study
run on real data, the report (markdown, HTML, plots, image grids) written and non-empty."""

import importlib.util
import json
import math
import os

import pytest
from PIL import Image

from gipip_jax.results import read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _driver(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name, studies, plots", [("aux_amount", 6, 2), ("ood", 6, 2), ("paper_bars", 5, 2)])
def test_smoke_variant_runs_end_to_end_and_reports(tmp_path, name, studies, plots):
    paths = _driver(name).run("smoke", str(tmp_path))
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


def test_unknown_variant_is_refused():
    with pytest.raises(SystemExit, match="unknown variant 'huge'"):
        _driver("ood").run("huge", "unused")


@pytest.mark.slow
def test_as_claim_smoke_pairs_arms_and_plots_the_traces(tmp_path):
    """issue 14's driver: reference and MSE AEs trained, train-split targets skip the AE's images,
    every record carries a trace, the report has paired statistics and the trace plots."""
    paths = _driver("as_claim").run("smoke", str(tmp_path))
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
def test_three_priors_smoke_attacks_the_same_targets_with_every_prior_trained_on_the_same_images(tmp_path):
    """issue 31's three-prior table: LTI, GI-PIP and the GAN prior from the same 256 auxiliary images,
    IG, LTI alone and LTI + IG on the same targets, each arm paired against IG."""
    _driver("three_priors").run("smoke", str(tmp_path))
    targets = None
    for arm in ("ig", "gipip", "gan", "lti", "lti_ig"):
        records = read_records(os.path.join(tmp_path, "studies", arm, "results.jsonl"))
        assert len(records) == 2 and all(r["status"] == "ok" for r in records)
        found = sorted(tuple(r["target_indices"]) for r in records)
        assert targets in (None, found)
        targets = found
    lti = read_records(os.path.join(tmp_path, "studies", "lti", "results.jsonl"))
    assert {r["attack"] for r in lti} == {"lti:lti"} and lti[0]["inverter"]["aux_count"] == 256
    gan = json.loads((tmp_path / "priors" / "gan" / "gan" / "metadata.json").read_text())
    ae = json.loads((tmp_path / "priors" / "ae" / "ae" / "metadata.json").read_text())
    assert gan["aux_count"] == ae["aux_count"] == 256 and gan["aux_seed"] == ae["aux_seed"] == 0
    assert (tmp_path / "report.md").read_text().count("against IG on 2 paired targets") == 4
    assert all(r["config"]["attack"]["signed"] for r in read_records(os.path.join(tmp_path, "studies", "ig", "results.jsonl")))
    half = read_records(os.path.join(tmp_path, "studies", "ig_half", "results.jsonl"))
    assert [r["iterations"] for r in half] == [5, 5] and sorted(tuple(r["target_indices"]) for r in half) == targets
    assert "IG, this budget vs half of it, 2 shared targets" in (tmp_path / "convergence.md").read_text()


@pytest.mark.slow
def test_as_map_smoke_trains_aes_to_targets_and_reports_both_parts(tmp_path):
    """issue 34's driver: AEs stopped at a target held-out error, one GI-PIP study per AE on IG's
    batches and keys, the two pre-specified contrasts, and the batch-size table."""
    summary = _driver("as_map").run("smoke", str(tmp_path))
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


def test_driver_bad_input_is_one_error_line_and_leaves_no_workdir(tmp_path, monkeypatch, capsys):
    """Run from outside the repository, the cpu variant finds no shipped AE: one line, exit status 2,
    and the work directory it would have created is not left behind."""
    from gipip_jax import experiment

    driver = _driver("as_claim")
    monkeypatch.chdir(tmp_path)
    assert experiment.main(driver.run, driver.__doc__, "as_claim", ["cpu", "new/W"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gipip-jax: error: ") and err.count("\n") == 1 and "ae_cifar10_aux5" in err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_defenses_smoke_runs_both_arms_of_every_family_and_reads_the_verdicts(tmp_path):
    """issue 31's driver: utility over 2 seeds, one study per family with the ignorant and the defense-aware
    arm, the strongest-attack tables, the matched-utility verdicts and the convergence check."""
    _driver("defenses").run("smoke", str(tmp_path))
    utility = (tmp_path / "utility.md").read_text()
    assert "| soteria | soteria_pruning=0.4 | not measured" in utility and utility.count("\n|") == 5
    for family in ("none", "gaussian_noise", "pruning_per_tensor", "soteria"):
        records = read_records(os.path.join(tmp_path, "studies", f"bs1_{family}", "results.jsonl"))
        adapted = [r for r in records if r["setting"].get("adaptive")]
        assert len(records) == (2 if family == "none" else 4) and len(adapted) == (0 if family == "none" else 2)
        assert all(r["status"] == "ok" for r in records) and all(r["attacker_knows"] for r in adapted)
    text = (tmp_path / "leakage_bs1.md").read_text()
    assert text.count("\n| bs1_") == 4 and text.count("Pruning best: ") == 6
    found = json.loads((tmp_path / "verdicts.json").read_text())   # the same verdicts, machine-readable
    assert len(found) == 6 and all(f"least leaking {v['least']} " in text for v in found)
    assert (tmp_path / "leakage_utility_bs1.png").stat().st_size > 0
    assert (tmp_path / "leakage_bs4.md").read_text().count("\n| bs4_") == 2
    half = read_records(os.path.join(tmp_path, "studies", "bs1_none_half", "results.jsonl"))
    assert [r["iterations"] for r in half] == [5, 5] and all(r["config"]["attack"]["signed"] for r in half)
    assert "bs 1, this budget vs half of it, 2 shared targets" in (tmp_path / "convergence.md").read_text()
    fedavg = read_records(os.path.join(tmp_path, "studies", "bs1_fedavg_5_lr5e-2", "results.jsonl"))
    assert len(fedavg) == 2 and all(r["config"]["threat"]["kind"] == "fedavg" for r in fedavg)
    threats = (tmp_path / "threat_models.md").read_text()
    assert "| bs1_fedavg_5_lr5e-2 | FedAvg, 5 local steps of lr 0.05, 1 image |" in threats
    assert "Secure aggregation of 4 single-image FedSGD clients" in threats and "over 1 batch." in threats
    scores = read_records(os.path.join(tmp_path, "scores_bs1.jsonl"))   # every pick recomputable without JAX
    assert len(scores) == 2 + 3 * 4 and {s["defense"] for s in scores} >= {"none", "soteria_pruning=0.4"}
    assert all(math.isfinite(s["aware_matching"]) and math.isfinite(s["psnr"]) for s in scores)


def test_pruning_claim_needs_the_interval_and_the_test():
    claim = _driver("defenses").pruning_claim
    beyond = {"ci_low": 0.5, "ci_high": 2.0, "p_holm": 0.01}
    noise = {"ci_low": -0.5, "ci_high": 2.0, "p_holm": 0.3}
    weak_p = {"ci_low": 0.1, "ci_high": 2.0, "p_holm": 0.2}
    assert claim("pruning per tensor", {"dropout": beyond, "pruning global": noise}) == "holds"
    assert claim("pruning per tensor", {"dropout": weak_p}) == "undecided"
    assert claim("dropout", {"pruning per tensor": beyond, "pruning global": beyond}) == "refuted"
    assert claim("dropout", {"pruning per tensor": beyond, "pruning global": noise}) == "undecided"
    assert claim("dropout", {"clipping": beyond}) == "pruning not affordable"


def test_utility_table_marks_a_diverged_training_run():
    """A defense that drives training to a NaN loss keeps its measured accuracy and says it diverged."""
    from gipip_jax import defenses

    driver = _driver("defenses")
    v = driver.VARIANTS["smoke"]
    by_setting = {}
    for family, setting in driver.settings(v):
        if family not in driver.UTILITY_UNMEASURED:
            for seed in (0, 1):
                loss = float("nan") if family == "gaussian noise" and seed == 1 else 1.5
                by_setting.setdefault(defenses.describe(setting), []).append(
                    {"recipe": {"seed": seed}, "eval_acc": 0.1 if math.isnan(loss) else 0.4, "train_loss": loss})
    rows = driver.utility_table(v, by_setting).splitlines()
    noisy = next(row for row in rows if row.startswith("| gaussian noise"))
    assert "0.250 ± 0.212 (diverged: seeds [1]) | +15.0 ± 21.2 |" in noisy
    assert sum("diverged" in row for row in rows) == 1


def test_heldout_count_is_the_ae_configs_for_every_variant():
    from gipip_jax import configs, experiment

    assert experiment.heldout_count("smoke") == configs.load_config(f"{experiment.AE_CONFIG}:smoke").heldout_count == 64
    for name in ("cpu", "full"):
        assert experiment.heldout_count(name) == configs.load_config(experiment.AE_CONFIG).heldout_count == 1000
