"""Label recovery: exact on constructed last-layer gradients and on a real victim's update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import client, data, labels
from gipip_jax.victims import make_victim

K, F = 10, 6
RNG = np.random.default_rng(0)


def constructed_grads(y, probs):
    """The classification layer's gradient of the mean CE loss, built from its formula.

    y: int (B,); probs: (B, K) softmax outputs; features h_i >= 0 with equal L1 norm.
    """
    y = np.asarray(y)
    h = RNG.uniform(0.1, 1.0, size=(len(y), F))
    h = h / h.sum(axis=1, keepdims=True)
    err = probs - np.eye(K)[y]                      # (B, K): p_i - y_i
    return {"Conv_0": {"kernel": np.zeros((3, 3, 3, 4), np.float32)},
            "Dense_0": {"kernel": (h.T @ err / len(y)).astype(np.float32), "bias": err.mean(axis=0).astype(np.float32)}}


def concentrated_probs(batch_size, on=K - 1):
    """Softmax outputs that put ~all mass on class `on` (never a label here), slightly input-dependent."""
    p = np.full((batch_size, K), 1e-3) + RNG.uniform(0, 1e-3, size=(batch_size, K))
    p[:, on] = 0.0
    p[:, on] = 1.0 - p.sum(axis=1)
    return p


@pytest.mark.parametrize("label", [0, 3, 9])
def test_idlg_exact_for_one_image(label):
    probs = RNG.dirichlet(np.ones(K), size=1)  # any softmax output, even one peaked on the true class
    np.testing.assert_array_equal(labels.idlg(constructed_grads([label], probs), K), [label])


def test_yin_recovers_unique_labels():
    y = np.array([7, 1, 4, 2])
    np.testing.assert_array_equal(labels.yin(constructed_grads(y, concentrated_probs(4)), K, 4), np.sort(y))


def test_yin_cannot_predict_repeats():
    got = labels.yin(constructed_grads([1, 1, 5, 5], concentrated_probs(4)), K, 4)
    assert len(set(got.tolist())) == 4
    assert labels.accuracy(got, [1, 1, 5, 5]) == 0.5


@pytest.mark.parametrize("y", [[1, 1, 1, 4, 6, 6], [2, 2, 2, 2], [0, 3, 3, 5, 7, 7, 7, 8]])
def test_llg_exact_with_repeated_labels(y):
    got = labels.llg(constructed_grads(y, concentrated_probs(len(y))), K, len(y))
    np.testing.assert_array_equal(got, np.sort(y))


@pytest.mark.parametrize("y", [[1, 1, 1, 4, 6, 6], [5, 5, 5, 5, 5, 5, 5, 5], [0, 1, 2, 3]])
def test_bias_count_exact_given_the_mean_output(y):
    probs = RNG.dirichlet(np.ones(K), size=len(y))  # arbitrary outputs: the count formula is exact for p̄
    got = labels.bias_count(constructed_grads(y, probs), K, len(y), probs.mean(axis=0))
    np.testing.assert_array_equal(got, np.sort(y))


def test_bias_count_wrong_when_mean_output_is_off():
    y = [1, 1, 4, 6]
    probs = concentrated_probs(4)
    wrong = np.roll(probs.mean(axis=0), 3)  # mass moved onto class 2
    assert labels.accuracy(labels.bias_count(constructed_grads(y, probs), K, 4, wrong), y) < 1.0


def test_accuracy_is_multiset_overlap():
    assert labels.accuracy([1, 1, 2, 3], [3, 1, 2, 1]) == 1.0
    assert labels.accuracy([1, 2, 2, 4], [1, 1, 2, 3]) == 0.5
    assert labels.accuracy([0], [1]) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        labels.accuracy([1, 2], [1])


def test_bad_requests_raise_clear_errors():
    grads = constructed_grads([1, 2], concentrated_probs(2))
    victim = make_victim("lenet", K, (8, 8, 3))
    with pytest.raises(ValueError, match="single image"):
        labels.recover("idlg", grads, 2, victim, {}, jax.random.key(0))
    with pytest.raises(ValueError, match="unknown label strategy"):
        labels.recover("magic", grads, 2, victim, {}, jax.random.key(0))
    with pytest.raises(ValueError, match="unique labels only"):
        labels.yin(grads, K, K + 1)
    two_heads = {"a": {"kernel": np.zeros((4, K))}, "b": {"kernel": np.zeros((3, K))}}
    with pytest.raises(ValueError, match="exactly one dense layer"):
        labels.idlg(two_heads, K)


@pytest.fixture(scope="module")
def real_test_images(fixtures_dir, tmp_path_factory):
    return data.load(f"folder:{fixtures_dir / 'tiny_folder'}", "test", cache_dir=tmp_path_factory.mktemp("cache"))


def test_idlg_and_bias_count_on_real_images_and_sigmoid_lenet(real_test_images):
    info = real_test_images.info
    victim = make_victim("lenet", info.num_classes, info.image_shape)
    variables = victim.init(jax.random.key(0))
    grad = jax.jit(lambda x, y: client.victim_gradient(victim, variables, x, y))
    for i in range(len(real_test_images.labels)):  # LeNet's sigmoid features are > 0: iDLG is exact
        x01, y = real_test_images.take([i])
        g = grad(jnp.asarray(info.normalize(x01)), jnp.asarray(y))
        np.testing.assert_array_equal(labels.recover("idlg", g, 1, victim, variables, jax.random.key(0)), y)
    x01, y = real_test_images.take(np.arange(len(real_test_images.labels)))  # 6 images, each label twice
    g = grad(jnp.asarray(info.normalize(x01)), jnp.asarray(y))
    got = labels.recover("bias_count", g, len(y), victim, variables, jax.random.key(1))
    assert got.shape == y.shape and got.dtype == np.int32
    assert labels.accuracy(got, y) >= 0.5
