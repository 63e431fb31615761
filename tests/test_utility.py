"""Utility of a defense: short real training runs with the defended client update, cached."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from gipip_jax import client, defenses, privacy, utility
from gipip_jax.victims import make_victim


def config(fixtures_dir, tmp_path, settings):
    c = ml_collections.ConfigDict()
    c.data = dict(name=f"folder:{fixtures_dir / 'tiny_folder'}", test_split="test", data_dir=None,
                  cache_dir=str(tmp_path / "cache"), image_size=None)
    c.victim = dict(name="lenet")
    c.train_count, c.eval_count, c.epochs, c.batch_size = 8, 6, 2, 4
    c.learning_rate, c.augment, c.seed, c.delta = 0.01, False, 0, 1e-5
    c.settings = settings
    return c


def test_the_defended_gradient_is_the_client_update():
    victim = make_victim("convnet_tiny", 3, (8, 8, 3))
    variables = victim.init(jax.random.key(0))
    x, y = jax.random.normal(jax.random.key(1), (4, 8, 8, 3)), jax.numpy.array([0, 1, 2, 0])
    plain = utility.defended_gradient_fn(victim, {})(variables, x, y, jax.random.key(2))
    jax.tree.map(np.testing.assert_array_equal, plain, client.victim_gradient(victim, variables, x, y))
    pruned = utility.defended_gradient_fn(victim, {"prune_sparsity": 0.5, "prune_scope": "global"})(
        variables, x, y, jax.random.key(2))
    jax.tree.map(np.testing.assert_array_equal, pruned, defenses.prune_updates(plain, 0.5, "global"))


def test_a_sweep_trains_each_setting_once_and_caches_it(fixtures_dir, tmp_path):
    settings = [{}, {"prune_sparsity": 0.9}, {"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0}]
    lines = []
    records = utility.run(config(fixtures_dir, tmp_path, settings), str(tmp_path / "w"), log=lines.append)
    assert [r["defense"] for r in records] == [defenses.parse(s).fields for s in settings]
    assert all(0 <= r["eval_acc"] <= 1 and r["epochs"] == 2 for r in records)
    assert records[0]["dp_epsilon"] is None
    assert records[2]["dp_epsilon"] == pytest.approx(privacy.dp_sgd_epsilon(1.0, 4 / 8, 2 * 2, 1e-5))
    cache = json.loads((tmp_path / "w" / utility.CACHE_FILE).read_text())
    assert len(cache) == 3 and "| {'prune_sparsity': 0.9} |" in lines[-1]
    # a rerun with one more setting, named twice (and the undefended one spelled out), trains only that
    # one, once; the cached records come back unchanged and the table lists each setting once
    lines.clear()
    more = utility.run(config(fixtures_dir, tmp_path, settings + [{"noise_std": 0.1}, {"noise_std": 0.1},
                                                                  {"noise_std": 0.0}]),
                       str(tmp_path / "w"), log=lines.append)
    assert more[:3] == records and more[3] == more[4] and more[5] == records[0]
    assert sum(line.startswith("[") for line in lines) == 1 and lines[-1].count("\n") == 1 + 4
    assert len(json.loads((tmp_path / "w" / utility.CACHE_FILE).read_text())) == 4


def test_noise_that_drowns_the_gradient_costs_accuracy_deterministically(fixtures_dir, tmp_path):
    c = config(fixtures_dir, tmp_path, [{}, {"noise_std": 1.0}])
    c.victim.name, c.epochs, c.learning_rate = "convnet_tiny", 6, 0.05
    clean, noisy = utility.run(c, str(tmp_path / "a"), log=lambda _: None)
    again = utility.run(c, str(tmp_path / "b"), log=lambda _: None)
    assert [r["eval_acc"] for r in again] == [clean["eval_acc"], noisy["eval_acc"]]
    assert clean["train_loss"] < noisy["train_loss"]


def test_bad_settings_and_caches_are_rejected(fixtures_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown defense fields"):
        utility.run(config(fixtures_dir, tmp_path, [{"noise": "gaussian", "std": 1.0}]), str(tmp_path))
    too_many = config(fixtures_dir, tmp_path, [{}])
    too_many.train_count = 13   # the tiny folder's train split has 12 images
    with pytest.raises(ValueError, match="train_count 13 exceeds the 12 images of"):
        utility.run(too_many, str(tmp_path / "many"))
    (tmp_path / utility.CACHE_FILE).write_text("[1, 2")
    with pytest.raises(ValueError, match="not valid JSON"):
        utility.run(config(fixtures_dir, tmp_path, [{}]), str(tmp_path))
