"""Deep image prior: a small untrained U-Net whose output is the candidate image (seed 002's attack).

The attack (`parameterizations.dip`) optimizes the U-Net's weights while its input, a noise tensor
drawn from the attack's key, stays fixed; the architecture itself is the prior (Ulyanov et al.,
2018): convolutional generators fit natural structure long before noise.

Layout for images (B, H, W, C), H and W divisible by 2^len(widths):
  encoder: per width w, a block (conv3x3 -> GroupNorm -> LeakyReLU 0.2, twice), kept as a skip,
           then a stride-2 conv3x3 (halves H, W);
  middle:  a block of width 2 * widths[-1];
  decoder: per width (reversed), bilinear x2 upsampling, concatenation with the skip, a block;
  out:     conv1x1 to C channels: logits (the parameterization applies a sigmoid).
GroupNorm (not BatchNorm) keeps the network a pure function of one image, with no running state.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _groups(width: int) -> int:
    return next(g for g in (8, 4, 2, 1) if width % g == 0)


class Block(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.Conv(self.width, (3, 3), padding=1)(x)
            x = nn.leaky_relu(nn.GroupNorm(num_groups=_groups(self.width))(x), 0.2)
        return x


class UNet(nn.Module):
    """(B, H, W, C_in) -> logits (B, H, W, channels)."""

    widths: Sequence[int] = (16, 32, 64)
    channels: int = 3

    @nn.compact
    def __call__(self, x):
        depth = len(self.widths)
        if x.shape[1] % 2 ** depth or x.shape[2] % 2 ** depth:
            raise ValueError(f"a U-Net of depth {depth} needs H and W divisible by {2 ** depth}, got input {x.shape}")
        skips = []
        for width in self.widths:
            x = Block(width)(x)
            skips.append(x)
            x = nn.Conv(width, (3, 3), strides=2, padding=1)(x)
        x = Block(2 * self.widths[-1])(x)
        for width, skip in zip(reversed(self.widths), reversed(skips)):
            x = jax.image.resize(x, (x.shape[0], skip.shape[1], skip.shape[2], x.shape[3]), "bilinear")
            x = Block(width)(jnp.concatenate([x, skip], axis=-1))
        return nn.Conv(self.channels, (1, 1))(x)


def make_unet(widths: Sequence[int] = (16, 32, 64), channels: int = 3) -> UNet:
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
        raise ValueError(f"U-Net widths must be a non-empty list of positive ints, got {widths}")
    return UNet(widths, channels)
