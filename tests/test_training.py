import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gipip_jax.autoencoder import make_autoencoder
from gipip_jax.training import (
    AE_RECIPES,
    augment_batch,
    autoencoder_reconstruction_errors,
    train_autoencoder,
    train_victim,
    victim_accuracy,
)
from gipip_jax.victims import make_victim


class FakeInfo:
    """Stands in for data.DatasetInfo: only ``normalize`` is used by the trainers."""

    mean = np.array([0.5, 0.5, 0.5], np.float32)
    std = np.array([0.25, 0.25, 0.25], np.float32)

    def normalize(self, x01):
        return (x01 - self.mean) / self.std


INFO = FakeInfo()


def separable_problem(count=48, size=16, seed=0):
    """Class 0: dark images, class 1: bright images, both with pixel noise. (N, size, size, 3) in [0, 1]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count).astype(np.int32)
    images = 0.3 + 0.4 * labels[:, None, None, None] + 0.2 * rng.standard_normal((count, size, size, 3))
    return np.clip(images, 0, 1).astype(np.float32), labels


def mean_loss(victim, variables, images01, labels):
    logits = victim.apply(variables, INFO.normalize(jnp.asarray(images01)))
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())


def silent(_):
    pass


def test_augment_batch_keeps_shape_and_range_and_depends_on_the_key():
    x = jax.random.uniform(jax.random.key(0), (6, 16, 16, 3))
    first = augment_batch(jax.random.key(1), x)
    assert first.shape == x.shape and float(first.min()) >= 0 and float(first.max()) <= 1
    np.testing.assert_array_equal(first, augment_batch(jax.random.key(1), x))
    assert not np.array_equal(first, augment_batch(jax.random.key(2), x))
    assert not np.array_equal(first, x)


@pytest.fixture(scope="module")
def trained_convnet():
    images, labels = separable_problem()
    victim = make_victim("convnet_tiny", 2, images.shape[1:])
    lines = []
    variables, metrics = train_victim(
        victim, images, labels, info=INFO, epochs=6, batch_size=8, learning_rate=0.05, seed=3,
        eval_images01=images[:20], eval_labels=labels[:20], augment=False, log=lines.append,
    )
    return victim, images, labels, variables, metrics, lines


@pytest.mark.slow
def test_training_reduces_the_loss(trained_convnet):
    victim, images, labels, variables, metrics, lines = trained_convnet
    initial = victim.init(jax.random.key(3))
    assert mean_loss(victim, variables, images, labels) < 0.5 * mean_loss(victim, initial, images, labels)
    assert metrics["epochs"] == 6 and metrics["train_acc"] > 0.8 and metrics["eval_acc"] > 0.8
    assert set(metrics) == {"epochs", "train_loss", "train_acc", "eval_acc", "seconds"}
    assert len(lines) == 6 and lines[-1].startswith("epoch 6/6") and "eval_acc" in lines[-1]
    assert not jax.tree.all(jax.tree.map(np.array_equal, variables["batch_stats"], initial["batch_stats"]))


def test_training_is_deterministic_under_a_seed(trained_convnet):
    victim, images, labels, variables, _, _ = trained_convnet
    again, _ = train_victim(victim, images, labels, info=INFO, epochs=6, batch_size=8, learning_rate=0.05,
                            seed=3, augment=False, log=silent)
    jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_lenet_trains_with_augmentation_and_has_no_batch_stats():
    images, labels = separable_problem(count=32, size=32)
    victim = make_victim("lenet", 2, images.shape[1:])
    run = lambda seed: train_victim(victim, images, labels, info=INFO, epochs=2, batch_size=8, seed=seed, log=silent)
    (variables, metrics), (same, _), (other, _) = run(0), run(0), run(1)
    assert set(variables) == {"params"} and np.isfinite(metrics["train_loss"])
    assert metrics["eval_acc"] is None
    jax.tree.map(np.testing.assert_array_equal, same, variables)
    assert not np.array_equal(other["params"]["Dense_0"]["kernel"], variables["params"]["Dense_0"]["kernel"])


def test_zero_epochs_returns_the_seeded_init_with_its_eval_accuracy():
    images, labels = separable_problem(count=10)
    victim = make_victim("resnet_tiny", 2, images.shape[1:])
    variables, metrics = train_victim(victim, images, labels, info=INFO, epochs=0, seed=7,
                                      eval_images01=images, eval_labels=labels, log=silent)
    jax.tree.map(np.testing.assert_array_equal, variables, victim.init(jax.random.key(7)))
    assert metrics["train_loss"] is None and metrics["epochs"] == 0
    assert metrics["eval_acc"] == victim_accuracy(victim, variables, images, labels, info=INFO)


def test_batch_larger_than_the_data_is_rejected():
    images, labels = separable_problem(count=4)
    with pytest.raises(ValueError, match="batch_size 8 exceeds the 4"):
        train_victim(make_victim("lenet", 2, images.shape[1:]), images, labels, info=INFO, epochs=1, batch_size=8)


@pytest.mark.parametrize("recipe", sorted(AE_RECIPES))
def test_autoencoder_recipes_run_and_report_heldout_error(recipe):
    images = jax.random.uniform(jax.random.key(0), (24, 32, 32, 3))
    params, metrics = train_autoencoder(images[:16], recipe=recipe, epochs=2, batch_size=4,
                                        heldout01=images[16:], log=silent)
    errors = autoencoder_reconstruction_errors(make_autoencoder(), params, images[16:])
    assert errors.shape == (8,)
    assert metrics["recipe"] == recipe and metrics["epochs"] == 2 and np.isfinite(metrics["train_loss"])
    assert metrics["heldout_mse"] == pytest.approx(float(errors.mean()), rel=1e-5)
    assert metrics["heldout_mse_median"] == pytest.approx(float(np.median(errors)), rel=1e-5)
    assert metrics["heldout_mse_std"] >= 0
    assert metrics["learning_rate"] == AE_RECIPES[recipe][2]


def test_autoencoder_training_reduces_reconstruction_error_and_is_deterministic():
    # Bright, nearly uniform images: far from the untrained AE's ~0.5 output, quick to learn.
    images = jnp.clip(0.85 + 0.05 * jax.random.normal(jax.random.key(0), (32, 32, 32, 3)), 0, 1)
    _, untrained = train_autoencoder(images, recipe="mse_adam", epochs=0, heldout01=images, log=silent)
    params, trained = train_autoencoder(images, recipe="mse_adam", epochs=3, batch_size=8, learning_rate=1e-2,
                                        heldout01=images, log=silent)
    assert trained["heldout_mse"] < 0.25 * untrained["heldout_mse"]
    again, _ = train_autoencoder(images, recipe="mse_adam", epochs=3, batch_size=8, learning_rate=1e-2, log=silent)
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_an_autoencoder_trained_to_a_target_heldout_error_stops_at_the_first_epoch_that_reaches_it():
    images = jnp.clip(0.85 + 0.05 * jax.random.normal(jax.random.key(0), (32, 32, 32, 3)), 0, 1)
    lines = []
    kwargs = dict(recipe="mse_adam", batch_size=8, learning_rate=1e-2, heldout01=images[:8])
    train_autoencoder(images, epochs=5, log=lines.append, **kwargs)
    per_epoch = [float(line.split("heldout_mse ")[1].split()[0]) for line in lines if line.startswith("epoch ")]
    assert per_epoch == sorted(per_epoch, reverse=True)   # falls every epoch here, so epoch 3 is the first below:
    target = (per_epoch[1] + per_epoch[2]) / 2
    params, metrics = train_autoencoder(images, epochs=5, target_heldout_mse=target, log=silent, **kwargs)
    assert metrics["epochs"] == 3 and metrics["max_epochs"] == 5 and metrics["reached_target"]
    assert metrics["heldout_mse"] <= target
    three, _ = train_autoencoder(images, epochs=3, log=silent, **kwargs)
    jax.tree.map(np.testing.assert_array_equal, params, three)   # the same weights as a 3-epoch run
    _, short = train_autoencoder(images, epochs=2, target_heldout_mse=target, log=silent, **kwargs)
    assert short["epochs"] == 2 and not short["reached_target"]   # out of epochs first: says so
    with pytest.raises(ValueError, match="needs held-out images"):
        train_autoencoder(images, recipe="mse_adam", epochs=1, target_heldout_mse=0.01, log=silent)


def test_unknown_autoencoder_recipe_lists_the_choices():
    with pytest.raises(ValueError, match="bce_adadelta"):
        train_autoencoder(np.zeros((4, 32, 32, 3), np.float32), recipe="sgd", epochs=1)


def test_a_client_gradient_hook_replaces_the_train_mode_gradient():
    images, labels = separable_problem(count=32)
    victim = make_victim("convnet_tiny", 2, images.shape[1:])
    initial = victim.init(jax.random.key(0))
    seen_keys = []

    def zero(variables, x, y, key):
        seen_keys.append(key)
        return jax.tree.map(jnp.zeros_like, variables["params"])

    frozen, metrics = train_victim(victim, images, labels, info=INFO, epochs=1, batch_size=8, weight_decay=0.0,
                                   augment=False, gradient_fn=zero, log=silent)
    jax.tree.map(np.testing.assert_array_equal, frozen, initial)  # nothing shared, nothing learned
    assert len(seen_keys) == 1 and np.isfinite(metrics["train_loss"])  # traced once, jitted

    def eval_mode_gradient(variables, x, y, key):
        del key
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(victim.apply({**variables, "params": p}, x), y).mean()
        return jax.grad(loss)(variables["params"])

    trained, _ = train_victim(victim, images, labels, info=INFO, epochs=4, batch_size=8, learning_rate=0.05,
                              augment=False, gradient_fn=eval_mode_gradient, log=silent)
    assert mean_loss(victim, trained, images, labels) < 0.5 * mean_loss(victim, initial, images, labels)
    # the client runs the victim in eval mode: BN running statistics are never updated
    jax.tree.map(np.testing.assert_array_equal, trained["batch_stats"], initial["batch_stats"])
