"""The summary table: grouping by setting, best restart per target."""

from gipip_jax import summarize


def record(target, restart, loss, psnr, as_weight=0.0, status="ok"):
    return {"attack": "study:ig", "model": "convnet", "batch_size": 1, "iterations": 10, "target_indices": [target],
            "restart": restart, "setting": {"tv_weight": 1e-6, "as_weight": as_weight}, "status": status,
            "loss": loss, "psnr": psnr}


def test_best_restart_per_target_is_the_lowest_loss():
    records = [record(0, 0, 0.5, 10.0), record(0, 1, 0.1, 20.0), record(1, 0, 0.2, 30.0),
               record(1, 1, float("nan"), 0.0, status="failed")]
    best = summarize.best_restarts(records)
    assert sorted(r["psnr"] for r in best) == [20.0, 30.0]
    row = summarize.table(records).splitlines()[2]
    assert "| 2 / 2 |" in row and "25.000 ± 5.000" in row


def test_settings_make_separate_rows():
    records = [record(0, 0, 0.5, 10.0), record(0, 0, 0.5, 12.0, as_weight=1e-4)]
    assert len(summarize.table(records).splitlines()) == 4
