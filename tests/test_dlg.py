"""DLG / iDLG: the L-BFGS attack runs jitted in lax.scan chunks and recovers a real image and label."""

import pathlib
import runpy

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import attack, client, data, dlg, jobs, labels, metrics, objectives, results
from gipip_jax.victims import make_victim

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "configs"


@pytest.fixture(scope="module")
def setup(fixtures_dir, tmp_path_factory):
    """Sigmoid LeNet on real 8x8 images (the tiny CIFAR-10 fixture, downsized), one target image."""
    images = data.load(f"folder:{fixtures_dir / 'tiny_folder'}", "test", image_size=8,
                       cache_dir=tmp_path_factory.mktemp("cache"))
    info = images.info
    victim = make_victim("lenet", info.num_classes, info.image_shape)
    variables = victim.init(jax.random.key(0))
    x01, y = images.take([3])
    target = client.victim_gradient(victim, variables, jnp.asarray(info.normalize(x01)), jnp.asarray(y))
    objective = objectives.make_objective(victim, variables, info, matching="l2")
    return info, objective, x01, y, target


def test_lbfgs_steps_run_jitted_in_scan_chunks_with_one_trace(setup):
    info, objective, x01, y, target = setup
    dlg_attack = dlg.make_dlg(objective, dlg.make_lbfgs(), num_classes=info.num_classes, learn_labels=True)
    chunk = attack.make_chunk_runner(dlg_attack._replace(step=chex.assert_max_traces(dlg_attack.step, n=1)), 10)
    state = dlg_attack.init(jax.random.key(1), x01.shape)
    assert state.params["label_logits"].shape == (1, info.num_classes)
    state, first = chunk(state, target, jnp.asarray(y), 20)
    state, second = chunk(state, target, jnp.asarray(y), 20)  # same compiled function, no retrace
    assert int(state.step) == 20
    assert np.all(np.isfinite(first)) and np.all(np.isfinite(second))
    assert second[-1] < 0.1 * first[0]
    np.testing.assert_allclose(state.best_loss, np.min(np.concatenate([first, second])))
    done, past = chunk(state, target, jnp.asarray(y), 20)  # steps past the total are masked
    assert int(done.step) == 20 and np.all(np.isnan(past))
    np.testing.assert_array_equal(done.params["x"], state.params["x"])


def test_dlg_recovers_real_image_and_label(setup):
    info, objective, x01, y, target = setup
    invert = dlg.make_dlg_inverter(objective, info.denormalize, num_classes=info.num_classes, learn_labels=True,
                                   iterations=400, chunk_size=100, log=lambda _: None)
    result = invert(target, jnp.zeros_like(jnp.asarray(y)), jax.random.key(2), x01.shape)
    np.testing.assert_array_equal(result.labels, y)
    assert float(metrics.psnr(result.images01, x01)[0]) > 30.0
    assert result.images01.min() >= 0.0 and result.images01.max() <= 1.0


def test_idlg_mode_optimizes_the_image_only(setup):
    info, objective, x01, y, target = setup
    wrong = (y + 1) % info.num_classes
    invert = dlg.make_dlg_inverter(objective, info.denormalize, num_classes=info.num_classes, learn_labels=False,
                                   iterations=100, chunk_size=50, restarts=2, log=lambda _: None)
    right = invert(target, jnp.asarray(y), jax.random.key(3), x01.shape)
    off = invert(target, jnp.asarray(wrong), jax.random.key(3), x01.shape)
    np.testing.assert_array_equal(right.labels, y)
    np.testing.assert_array_equal(off.labels, wrong)
    assert len(right.restart_losses) == 2 and right.loss == min(right.restart_losses)
    assert right.loss < off.loss  # with the wrong label the gradient cannot be matched


def test_bad_settings_raise(setup):
    info, objective, *_ = setup
    with pytest.raises(ValueError, match="must be >= 1"):
        dlg.make_dlg_inverter(objective, info.denormalize, num_classes=3, learn_labels=True, iterations=0)



def test_attack_job_with_lbfgs_and_recovered_labels(fixtures_dir, tmp_path):
    config = runpy.run_path(str(CONFIGS / "dlg_cifar10.py"))["get_config"]("smoke")
    config.data.name = f"folder:{fixtures_dir / 'tiny_folder'}"
    config.data.cache_dir = str(tmp_path / "cache")
    config.attack.update(dict(iterations=20, chunk_size=10, labels="bias_count"))
    config.metrics.lpips_net = None
    config.targets.update(dict(starts=[0], batch_size=2, unique_labels=False))
    (record,) = jobs.attack(config, str(tmp_path / "run"))
    assert results.read_records(str(tmp_path / "run" / "results.jsonl"))[0]["label_accuracy"] == record["label_accuracy"]
    assert record["label_source"] == "bias_count" and len(record["recovered_labels"]) == 2
    assert record["label_accuracy"] == labels.accuracy(record["recovered_labels"], record["labels"])
    config.attack.labels = "idlg"
    with pytest.raises(ValueError, match="single image"):
        jobs.attack(config, str(tmp_path / "run2"))
