"""Deep image prior + feature matching: U-Net shapes/gradients, feature recovery from a linear
layer's gradient (exact at bs 1), the DIP parameterization and optimizer, and a DIP study."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gipip_jax import cli, dip, features, parameterizations
from gipip_jax.attack import make_attack, step_decay_schedule
from gipip_jax.client import victim_gradient
from gipip_jax.data import DatasetInfo
from gipip_jax.objectives import make_objective
from gipip_jax.victims import make_victim

CONFIGS = pathlib.Path(__file__).parent.parent / "experiments" / "configs"
INFO = DatasetInfo("toy", (8, 8, 3), 4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), tuple("abcd"))


def test_unet_shapes_and_gradients():
    net = dip.make_unet((4, 8), channels=3)
    noise = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
    params = net.init(jax.random.key(1), noise)["params"]
    assert net.apply({"params": params}, noise).shape == (2, 8, 8, 3)
    grads = jax.grad(lambda p: jnp.sum(net.apply({"params": p}, noise) ** 2))(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves) and sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    with pytest.raises(ValueError, match="divisible by 4"):
        net.init(jax.random.key(1), jnp.zeros((1, 6, 6, 5)))


def test_feature_recovery_is_exact_for_one_image_on_a_constructed_linear_layer():
    key_h, key_w, key_b = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(key_h, (1, 7))
    params = {"dense": {"kernel": jax.random.normal(key_w, (7, 5)), "bias": jax.random.normal(key_b, (5,))}}

    def loss(p):
        logits = h @ p["dense"]["kernel"] + p["dense"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([2])).mean()

    recovered = features.recover_features(jax.grad(loss)(params), jnp.array([2]), 5)
    np.testing.assert_allclose(recovered, h, rtol=1e-5)


def test_feature_recovery_matches_the_victims_classifier_input():
    victim = make_victim("convnet_tiny", INFO.num_classes, INFO.image_shape)
    variables = victim.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, *INFO.image_shape))
    grads = victim_gradient(victim, variables, x, jnp.array([3]))
    np.testing.assert_allclose(features.recover_features(grads, jnp.array([3]), INFO.num_classes),
                               features.classifier_input(victim, variables, x), rtol=1e-4, atol=1e-6)
    # bs > 1: each image's label column (an approximation; close for an untrained victim).
    xb = jax.random.normal(jax.random.key(2), (2, *INFO.image_shape))
    grads = victim_gradient(victim, variables, xb, jnp.array([0, 2]))
    assert features.recover_features(grads, jnp.array([0, 2]), INFO.num_classes).shape == (2, 32)


def test_feature_term_is_zero_at_the_truth_and_needs_a_bias():
    victim = make_victim("convnet_tiny", INFO.num_classes, INFO.image_shape)
    variables = victim.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, *INFO.image_shape))
    labels = jnp.array([1])
    grads = victim_gradient(victim, variables, x, labels)
    objective = make_objective(victim, variables, INFO, terms={"features": {"weight": 1.0}})
    _, terms = objective(x, grads, labels)
    assert float(terms["features"]) < 1e-8 and float(terms["matching"]) < 1e-5
    _, terms = objective(x + 1.0, grads, labels)
    assert float(terms["features"]) > 1e-4
    no_bias = {**grads, "Dense_0": {"kernel": grads["Dense_0"]["kernel"]}}
    with pytest.raises(ValueError, match="bias"):
        features.recover_features(no_bias, labels, INFO.num_classes)


def test_dip_attack_moves_the_weights_not_the_noise_and_lowers_the_objective():
    victim = make_victim("convnet_tiny", INFO.num_classes, INFO.image_shape)
    variables = victim.init(jax.random.key(0))
    x_true = INFO.normalize(jax.random.uniform(jax.random.key(1), (1, *INFO.image_shape)))
    labels = jnp.array([2])
    target = victim_gradient(victim, variables, x_true, labels)
    objective = make_objective(victim, variables, INFO, terms={"tv": {"weight": 1e-4}, "features": {"weight": 0.1}})
    p = parameterizations.dip(dip.make_unet((4, 8)), INFO.normalize, noise_channels=4)
    a = make_attack(objective, parameterizations.make_dip_optimizer(0.01, 20, schedule=step_decay_schedule),
                    parameterization=p)
    state = a.init(jax.random.key(5), (1, *INFO.image_shape))
    first = state
    step = jax.jit(a.step)
    losses = []
    for _ in range(20):
        state = step(state, target, labels)
        losses.append(float(state.loss))
    np.testing.assert_array_equal(state.x["noise"], first.x["noise"])
    assert not np.allclose(jax.tree.leaves(state.x["net"])[0], jax.tree.leaves(first.x["net"])[0])
    assert losses[-1] < losses[0]
    x01 = INFO.denormalize(a.render(state.x))
    assert x01.shape == (1, 8, 8, 3) and float(x01.min()) >= 0 and float(x01.max()) <= 1


@pytest.mark.slow
def test_dip_study_end_to_end(fixtures_dir, tmp_path):
    cache = tmp_path / "cache"
    args = ["study", "--config", str(CONFIGS / "study_dip_cifar10.py:smoke"), "--workdir", str(tmp_path / "w"),
            f"--set=data.name=folder:{fixtures_dir / 'tiny_folder'}", f"--set=data.cache_dir={cache}",
            "--set=data.split=test", "--set=targets.starts=[0]", "--set=victim.name=convnet_tiny",
            "--set=attack.iterations=4", "--set=engine.chunk_size=2", "--set=metrics.lpips_net=None",
            "--set=dip.widths=[4, 8]", "--set=dip.noise_channels=4"]
    assert cli.main(args) == 0
    records = [json.loads(line) for line in open(tmp_path / "w" / "results.jsonl")]
    assert [(r["attack"], r["setting"]["feature_weight"]) for r in records] == [("dip:dip", 0.0), ("dip:dip", 0.1)]
    assert all(r["status"] == "ok" and r["steps"] == 4 and "features" in r["terms"] for r in records)
