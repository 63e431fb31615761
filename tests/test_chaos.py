"""benchmarks/chaos.py: the same attacks at two engine widths, the spread computed from the records."""
import importlib.util
import json
import os

import numpy as np
import pytest

from gipip_jax.results import read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _chaos():
    spec = importlib.util.spec_from_file_location("chaos", os.path.join(ROOT, "benchmarks", "chaos.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_chaos_reports_the_per_target_spread_of_the_records_across_widths(tmp_path, folder):
    chaos = _chaos()
    sets = [f"--set={a.removeprefix('--set=')}" for a in folder] + ["--set=victim.name=convnet_tiny",
                                                                       "--set=engine.chunk_size=5"]
    assert chaos.main(["--workdir", str(tmp_path), "--iterations", "10", "--widths", "1", "3", "--targets", "3",
                       *sets]) == 0
    result = json.loads((tmp_path / "chaos.json").read_text())["budgets"]["10"]
    psnr = {}
    for width in (1, 3):
        records = read_records(str(tmp_path / "studies" / f"it10_w{width}" / "results.jsonl"))
        assert {r["plan"]["attacks_per_device"] for r in records} == {width}
        psnr[width] = {tuple(r["target_indices"]): r["psnr"] for r in records}
    differences = [abs(psnr[1][t] - psnr[3][t]) for t in psnr[1]]
    assert result["targets"] == 3 and result["pairs"] == 3
    assert result["abs_delta_psnr"]["max"] == pytest.approx(max(differences))
    assert result["abs_delta_psnr"]["median"] == pytest.approx(float(np.median(differences)))
    assert result["psnr"] == {str(w): {",".join(map(str, t)): v for t, v in psnr[w].items()} for w in (1, 3)}
    assert len(chaos.table(result).splitlines()) == 2 + 3 + 1
    assert result["largest_mean_difference"] == pytest.approx(
        abs(np.mean(list(psnr[1].values())) - np.mean(list(psnr[3].values()))))


@pytest.mark.slow
def test_bad_input_is_one_line_and_status_2(tmp_path, folder, capsys):
    chaos = _chaos()
    sets = [f"--set={a.removeprefix('--set=')}" for a in folder] + ["--set=victim.name=nosuch"]
    assert chaos.run(["--workdir", str(tmp_path), "--iterations", "5", "--targets", "2", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gipip-jax: error: unknown victim 'nosuch'")
