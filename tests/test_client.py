"""Client update: gradient shapes, FedSGD vs per-example gradients, tree checks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import client
from gipip_jax.victims import make_victim

SHAPE = (8, 8, 3)


@pytest.fixture(scope="module")
def setup():
    victim = make_victim("convnet_tiny", 5, SHAPE)
    variables = victim.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (3, *SHAPE))
    labels = jnp.array([0, 4, 2])
    return victim, variables, x, labels


def test_update_has_the_params_tree(setup):
    victim, variables, x, labels = setup
    update = client.fedsgd_update(victim, variables, x, labels)
    assert update.batch_size == 3
    chex.assert_trees_all_equal_shapes_and_dtypes(update.grads, variables["params"])
    client.check_update_matches(update.grads, variables["params"])


def test_fedsgd_is_the_mean_of_per_example_gradients(setup):
    victim, variables, x, labels = setup
    per_example = client.per_example_gradients(victim, variables, x, labels)
    batch = client.victim_gradient(victim, variables, x, labels)
    for pe, g in zip(jax.tree.leaves(per_example), jax.tree.leaves(batch)):
        assert pe.shape == (3, *g.shape)
        np.testing.assert_allclose(pe.mean(0), g, rtol=1e-4, atol=1e-6)
    # ... and each per-example gradient is the gradient of that example alone.
    alone = client.victim_gradient(victim, variables, x[1:2], labels[1:2])
    chex.assert_trees_all_close(jax.tree.map(lambda pe: pe[1], per_example), alone, rtol=1e-4, atol=1e-6)


def test_soft_labels_equal_one_hot(setup):
    victim, variables, x, labels = setup
    hard = client.victim_gradient(victim, variables, x, labels)
    soft = client.victim_gradient(victim, variables, x, jax.nn.one_hot(labels, 5))
    chex.assert_trees_all_close(hard, soft, rtol=1e-5, atol=1e-7)


def test_mismatched_gradient_trees_are_rejected(setup):
    victim, variables, x, labels = setup
    grads = client.victim_gradient(victim, variables, x, labels)
    other = make_victim("convnet_tiny", 7, SHAPE).init(jax.random.key(0))["params"]
    with pytest.raises(client.UpdateMismatchError, match="shape"):
        client.check_update_matches(other, variables["params"])
    lenet = make_victim("lenet", 5, SHAPE).init(jax.random.key(0))["params"]
    with pytest.raises(client.UpdateMismatchError, match="does not match"):
        client.check_update_matches(lenet, variables["params"])
    poisoned = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    with pytest.raises(client.UpdateMismatchError, match="NaN"):
        client.check_update_matches(poisoned, variables["params"])
