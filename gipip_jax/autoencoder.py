"""GI-PIP's image prior: a small convolutional autoencoder.

The attack scores a candidate image by how badly this autoencoder, trained on a
few auxiliary images, reconstructs it (the anomaly-score loss lives with the
attack; this module only defines the network).

Layout (matching GI-PIP's PyTorch reference, kernel 4 / stride 2 / padding 1):

* encoder: Conv 3->12, ReLU, Conv 12->24, ReLU, Conv 24->48, ReLU
  (each halves H and W: (B, 32, 32, 3) -> (B, 4, 4, 48)),
* decoder: ConvTranspose 48->24, ReLU, ConvTranspose 24->12, ReLU,
  ConvTranspose 12->3, sigmoid (each doubles H and W).

Padding of the transposed convs: PyTorch's ``ConvTranspose2d(k=4, s=2, p=1)``
gives ``out = 2 * in``. Flax's ``ConvTranspose`` (``lax.conv_transpose``) pads
the stride-dilated input instead, and PyTorch's padding ``p`` corresponds to
Flax padding ``k - 1 - p = 2`` on each side; with ``transpose_kernel=True`` the
layer is exactly the adjoint (gradient) of the matching stride-2 conv, as in
PyTorch. Input H and W must be divisible by 8 (e.g. 32 or 64 px).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

ENCODER_WIDTHS = (12, 24, 48)
KERNEL = 4
STRIDE = 2
TORCH_PADDING = 1
TRANSPOSE_PADDING = KERNEL - 1 - TORCH_PADDING


class Autoencoder(nn.Module):
    """Maps images (B, H, W, 3) in [0, 1] to reconstructions of the same shape in [0, 1]."""

    channels: int = 3

    def setup(self):
        self.encoder_convs = [
            nn.Conv(width, (KERNEL, KERNEL), strides=STRIDE, padding=TORCH_PADDING)
            for width in ENCODER_WIDTHS
        ]
        decoder_widths = (*ENCODER_WIDTHS[-2::-1], self.channels)  # 24, 12, 3
        self.decoder_convs = [
            nn.ConvTranspose(
                width,
                (KERNEL, KERNEL),
                strides=(STRIDE, STRIDE),
                padding=TRANSPOSE_PADDING,
                transpose_kernel=True,
            )
            for width in decoder_widths
        ]

    def encode(self, x: jax.Array) -> jax.Array:
        """Code (B, H/8, W/8, 48), non-negative, for images (B, H, W, 3) in [0, 1]."""
        if x.shape[1] % 8 or x.shape[2] % 8:
            raise ValueError(f"autoencoder needs H and W divisible by 8, got shape {x.shape}")
        for conv in self.encoder_convs:
            x = nn.relu(conv(x))
        return x

    def decode_logits(self, code: jax.Array) -> jax.Array:
        """Pre-sigmoid reconstruction (B, H, W, 3) of a code (B, H/8, W/8, 48)."""
        for index, conv in enumerate(self.decoder_convs):
            code = conv(code)
            if index < len(self.decoder_convs) - 1:
                code = nn.relu(code)
        return code

    def reconstruction_logits(self, x: jax.Array) -> jax.Array:
        """Pre-sigmoid reconstruction of ``x``; for numerically stable BCE training."""
        return self.decode_logits(self.encode(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Reconstruction (B, H, W, 3) in [0, 1] of images ``x`` (B, H, W, 3) in [0, 1]."""
        return jax.nn.sigmoid(self.reconstruction_logits(x))


def make_autoencoder() -> Autoencoder:
    """GI-PIP's autoencoder for RGB images; init with ``ae.init(key, x)`` for any H, W divisible by 8."""
    return Autoencoder()


def init_autoencoder_params(autoencoder: Autoencoder, key: jax.Array, image_shape=(32, 32, 3)) -> dict:
    """Fresh parameters (the contents of the ``'params'`` collection); they do not depend on H, W."""
    return autoencoder.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
