"""The patch-gradient convolution: same function, same gradients, same double backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax import convs
from gipip_jax.client import make_loss_fn
from gipip_jax.objectives import gradient_cosine_distance
from gipip_jax.victims import make_victim


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", [("resnet_tiny", (8, 8, 3)), ("lenet", (8, 8, 3))])
def test_patch_grad_victim_matches_native_to_second_order(name, shape):
    native = make_victim(name, 4, shape, conv="native")
    patched = make_victim(name, 4, shape, conv="patch_grad")
    variables = native.init(jax.random.key(0))
    assert jax.tree.structure(patched.init(jax.random.key(0))) == jax.tree.structure(variables)
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    labels = jnp.array([1, 3])
    target = jax.grad(make_loss_fn(native, variables))(variables["params"], x + 0.3, labels)

    def attack_grad(victim, xs):
        """Gradient w.r.t. the images of the cosine matching loss, vmapped over 3 attacks."""
        loss = make_loss_fn(victim, variables)

        def objective(xi):
            return gradient_cosine_distance(jax.grad(loss)(variables["params"], xi, labels), target)

        return jax.vmap(jax.grad(objective))(xs)

    xs = jnp.stack([x, x * 0.5, -x])
    np.testing.assert_allclose(patched.apply(variables, x), native.apply(variables, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attack_grad(patched, xs), attack_grad(native, xs), rtol=1e-4, atol=1e-7)


def test_unsupported_settings_fall_back_to_lax():
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 4))
    k = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    args = (x, k, (1, 1), [(1, 1), (1, 1)])
    kw = dict(dimension_numbers=convs.NHWC, feature_group_count=2)
    np.testing.assert_allclose(convs.patch_grad_conv(*args, **kw), jax.lax.conv_general_dilated(*args, **kw))


def test_unknown_conv_impl():
    with pytest.raises(ValueError, match="unknown convolution"):
        make_victim("convnet_tiny", 4, (8, 8, 3), conv="winograd")


@pytest.mark.parametrize("padding, strides, window", [("SAME", (2, 2), (1, 1)), ("VALID", (1, 1), (3, 3)),
                                                      ([(1, 2), (0, 1)], (2, 1), (3, 2))])
def test_patch_grad_kernel_gradient_for_string_and_uneven_padding(padding, strides, window):
    """String paddings (Flax's default for the ResNet shortcut convs) now take the patch path too."""
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
    k = jax.random.normal(jax.random.key(1), (*window, 3, 4))

    def loss(conv, x, k):
        return jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=convs.NHWC)))

    for argnum in (0, 1):
        want = jax.grad(loss, argnum + 1)(jax.lax.conv_general_dilated, x, k)
        got = jax.grad(loss, argnum + 1)(convs.patch_grad_conv, x, k)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
