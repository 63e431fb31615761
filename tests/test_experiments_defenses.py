"""Issue 31's drivers (experiments/defenses.py, experiments/three_priors.py): smoke variants end to end,
and the verdict and table rules on hand-made numbers. Apart from test_experiments.py so that the second
tier (`--dist loadfile`) spreads the long smokes over both workers."""

import json
import math
import os

import pytest

from gipip_jax.results import read_records


@pytest.mark.slow
def test_three_priors_smoke_attacks_the_same_targets_with_every_prior_trained_on_the_same_images(driver, tmp_path):
    """issue 31's three-prior table: LTI, GI-PIP and the GAN prior from the same 256 auxiliary images,
    IG, LTI alone and LTI + IG on the same targets, each arm paired against IG."""
    driver("three_priors").run("smoke", str(tmp_path))
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
    flat = read_records(os.path.join(tmp_path, "studies", "ig_flat", "results.jsonl"))
    assert [r["config"]["attack"]["init"] for r in flat] == ["flat", "flat"]
    assert sorted(tuple(r["target_indices"]) for r in flat) == targets
    start = (tmp_path / "flat_start.md").read_text()
    assert "LTI + IG vs IG from a flat image" in start and "IG from a flat image vs IG from N(0, 1), 2 shared" in start


@pytest.mark.slow
def test_defenses_smoke_runs_both_arms_of_every_family_and_reads_the_verdicts(driver, tmp_path):
    """issue 31's driver: utility over 2 seeds, one study per family with the ignorant and the defense-aware
    arm, the strongest-attack tables, the matched-utility verdicts and the convergence check."""
    driver("defenses").run("smoke", str(tmp_path))
    utility = (tmp_path / "utility.md").read_text()
    assert "| soteria | soteria_pruning=0.4 | not measured" in utility and utility.count("\n|") == 5
    for family in ("none", "gaussian_noise", "pruning_per_tensor", "soteria"):
        records = read_records(os.path.join(tmp_path, "studies", f"bs1_{family}", "results.jsonl"))
        adapted = [r for r in records if r["setting"].get("adaptive")]
        assert len(records) == (2 if family == "none" else 4) and len(adapted) == (0 if family == "none" else 2)
        assert all(r["status"] == "ok" for r in records) and all(r["attacker_knows"] for r in adapted)
    text = (tmp_path / "leakage_bs1.md").read_text()
    assert text.count("\n| bs1_") == 4 and text.count("Pruning best: ") == 6
    undefended = next(line for line in text.splitlines() if line.startswith("| bs1_none | none |"))
    assert "| +0.00 [+0.00, +0.00], med +0.00, 0↑/0↓ |" in undefended   # no defense to know: the same picks
    found = json.loads((tmp_path / "verdicts.json").read_text())   # the same verdicts, machine-readable
    assert len(found) == 6 and all(f"least leaking {v['least']} " in text for v in found)
    assert (tmp_path / "leakage_utility_bs1.png").stat().st_size > 0
    assert "Not drawn, having no utility number (their leakage is in the table): soteria." in text
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


def test_pruning_claim_needs_the_interval_and_the_test(driver):
    claim = driver("defenses").pruning_claim
    beyond = {"ci_low": 0.5, "ci_high": 2.0, "p_holm": 0.01}
    noise = {"ci_low": -0.5, "ci_high": 2.0, "p_holm": 0.3}
    weak_p = {"ci_low": 0.1, "ci_high": 2.0, "p_holm": 0.2}
    assert claim("pruning per tensor", {"dropout": beyond, "pruning global": noise}) == "holds"
    assert claim("pruning per tensor", {"dropout": weak_p}) == "undecided"
    assert claim("dropout", {"pruning per tensor": beyond, "pruning global": beyond}) == "refuted"
    assert claim("dropout", {"pruning per tensor": beyond, "pruning global": noise}) == "undecided"
    assert claim("dropout", {"clipping": beyond}) == "pruning not affordable"


def test_utility_table_marks_a_diverged_training_run(driver):
    """A defense that drives training to a NaN loss keeps its measured accuracy and says it diverged."""
    from gipip_jax import defenses

    study = driver("defenses")
    v = study.VARIANTS["smoke"]
    by_setting = {}
    for family, setting in study.settings(v):
        if family not in study.UTILITY_UNMEASURED:
            for seed in (0, 1):
                loss = float("nan") if family == "gaussian noise" and seed == 1 else 1.5
                by_setting.setdefault(defenses.describe(setting), []).append(
                    {"recipe": {"seed": seed}, "eval_acc": 0.1 if math.isnan(loss) else 0.4, "train_loss": loss})
    rows = study.utility_table(v, by_setting).splitlines()
    noisy = next(row for row in rows if row.startswith("| gaussian noise"))
    assert "0.250 ± 0.212 (diverged: seeds [1]) | +15.0 ± 21.2 |" in noisy
    assert sum("diverged" in row for row in rows) == 1
