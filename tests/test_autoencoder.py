import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gipip_jax.autoencoder import TRANSPOSE_PADDING, Autoencoder, init_autoencoder_params, make_autoencoder


@pytest.mark.parametrize("size", [32, 64])
def test_output_has_the_input_shape_and_lies_in_unit_interval(size):
    autoencoder = make_autoencoder()
    params = init_autoencoder_params(autoencoder, jax.random.key(0), (size, size, 3))
    x01 = jax.random.uniform(jax.random.key(1), (2, size, size, 3))
    out = autoencoder.apply({"params": params}, x01)
    assert out.shape == x01.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    code = autoencoder.apply({"params": params}, x01, method=Autoencoder.encode)
    assert code.shape == (2, size // 8, size // 8, 48) and float(code.min()) >= 0.0


def test_parameter_count_matches_the_pytorch_reference():
    params = init_autoencoder_params(make_autoencoder(), jax.random.key(0))
    # encoder 588 + 4,632 + 18,480; decoder 18,456 + 4,620 + 579
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == 47_355


def test_params_do_not_depend_on_image_size():
    autoencoder = make_autoencoder()
    small = jax.eval_shape(lambda k: init_autoencoder_params(autoencoder, k, (32, 32, 3)), jax.random.key(0))
    large = jax.eval_shape(lambda k: init_autoencoder_params(autoencoder, k, (64, 64, 3)), jax.random.key(0))
    assert jax.tree.map(lambda a: a.shape, small) == jax.tree.map(lambda a: a.shape, large)


def test_transposed_conv_is_the_adjoint_of_the_stride_two_conv():
    """PyTorch's ConvTranspose2d(k4, s2, p1) is the gradient of Conv2d(k4, s2, p1) w.r.t. its input."""
    layer = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding=TRANSPOSE_PADDING, transpose_kernel=True, use_bias=False)
    code = jax.random.normal(jax.random.key(0), (2, 8, 8, 7))
    variables = layer.init(jax.random.key(1), code)
    kernel = variables["params"]["kernel"]  # (4, 4, 5, 7): HWIO of the forward conv 5 -> 7

    def conv(z):
        return jax.lax.conv_general_dilated(z, kernel, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    _, conv_vjp = jax.vjp(conv, jnp.zeros((2, 16, 16, 5)))
    np.testing.assert_allclose(layer.apply(variables, code), conv_vjp(code)[0], rtol=1e-5, atol=1e-5)


def test_sizes_not_divisible_by_eight_are_rejected():
    autoencoder = make_autoencoder()
    params = init_autoencoder_params(autoencoder, jax.random.key(0))
    with pytest.raises(ValueError, match="divisible by 8"):
        autoencoder.apply({"params": params}, jnp.zeros((1, 36, 36, 3)))
