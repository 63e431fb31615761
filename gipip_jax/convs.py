"""Convolution implementations a victim can be built with, for fast attacks on CPUs and for batches.

A gradient-inversion attack needs the victim's parameter gradient for its own candidate images, and
differentiates it again with respect to the images (the double backward). Two measured problems
with XLA's native convolution on the CPU backend (BENCHMARKS.md):

- its weight gradient is slow even for one attack (patch form: 2.2-3x faster steps), and
- under `vmap` over N independent attacks, JAX turns each conv's weight gradient into a grouped
  convolution over the attack axis, which runs ~20x slower than the attacks one after another.

`patch_grad_conv` computes the convolution as an explicit im2col matmul: image patches built by
padding and kh*kw strided slices (pure data movement, features ordered (i, j, c) like the rows of
an HWIO kernel), times the kernel reshaped to (kh*kw*C, O). Everything is plain differentiable JAX,
so autodiff makes every derivative a matmul or data movement, to any order:

    y  = patches(x) @ W                  dW[(i, j, c), o] = sum_{b, h, w} patches(x)[b, h, w, (i, j, c)] * dy[b, h, w, o]
    dx = patches^T(dy @ W^T)             (the adjoint of the slices: pads and adds)

and vmap turns the weight gradient into a batched matmul. (The first version kept the native
forward pass and input gradient and only replaced the weight gradient, via a custom VJP; the full
im2col form measured 38-42 % less CPU time per attack step; BENCHMARKS.md.) Only NHWC/HWIO
convolutions without dilation or feature groups take this path; other settings use
`lax.conv_general_dilated`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, tuple) and all(isinstance(d, str) for d in dimension_numbers):
        return tuple(dimension_numbers) == NHWC
    return tuple(map(tuple, dimension_numbers)) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _patches(x: jax.Array, window: tuple, strides: tuple, padding: tuple, out_hw: tuple) -> jax.Array:
    """Image patches (B, H', W', kh*kw*C), features ordered (i, j, c) like an HWIO kernel's rows.

    Built by padding and kh*kw strided slices: pure data movement. (`lax.conv_general_dilated_patches`
    is a convolution with a one-hot kernel: measured 15 % slower per attack step on the CPU.)
    """
    (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    b, _, _, c = x.shape
    return jnp.concatenate([lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c), (1, sh, sw, 1))
                            for i in range(kh) for j in range(kw)], axis=-1)


def _im2col_conv(x: jax.Array, kernel: jax.Array, strides: tuple, padding: tuple) -> jax.Array:
    """conv(x (B,H,W,C), kernel (kh,kw,C,O)) -> (B,H',W',O) as patches(x) @ kernel."""
    kh, kw, c, o = kernel.shape
    out_hw = tuple((size + lo + hi - k) // s + 1
                   for size, (lo, hi), k, s in zip(x.shape[1:3], padding, (kh, kw), strides))
    patches = _patches(x, (kh, kw), strides, padding, out_hw)
    return jnp.einsum("bhwk,ko->bhwo", patches, kernel.reshape(kh * kw * c, o))


def patch_grad_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                    dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                    preferred_element_type=None):
    """Drop-in for `lax.conv_general_dilated` (same signature) computed as an im2col matmul."""
    plain = (_is_nhwc(dimension_numbers) and feature_group_count == 1 and batch_group_count == 1
             and all(d == 1 for d in (lhs_dilation or (1,))) and all(d == 1 for d in (rhs_dilation or (1,)))
             and precision is None and preferred_element_type is None)
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    if isinstance(padding, str):  # "SAME" / "VALID" (e.g. Flax's default for the 1x1 shortcut convs)
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _im2col_conv(lhs, rhs, tuple(int(s) for s in window_strides), padding)


CONV_IMPLS: dict[str, Callable] = {"native": lax.conv_general_dilated, "patch_grad": patch_grad_conv}
CONV_CHOICES = ("auto", *CONV_IMPLS)


def resolve_conv(name: str = "auto", backend: str | None = None) -> str:
    """The implementation name (a key of CONV_IMPLS) that `name` (one of CONV_CHOICES) stands for.

    "auto" picks "patch_grad" on the CPU, where XLA's native conv weight gradient is slow and the patch
    matmul makes one attack step 2.2-3x faster (BENCHMARKS.md), and "native" on other backends (where
    the patch form is not measured to win). `backend` defaults to `jax.default_backend()`. Both compute
    the same function and gradients: only the speed of the double backward changes.
    """
    if name == "auto":
        return "patch_grad" if (backend or jax.default_backend()) == "cpu" else "native"
    if name not in CONV_IMPLS:
        raise ValueError(f"unknown convolution implementation {name!r}; choose one of {', '.join(CONV_CHOICES)}")
    return name


def conv_impl(name: str, backend: str | None = None) -> Callable:
    """The convolution function called `name` (one of CONV_CHOICES; "auto" as in `resolve_conv`)."""
    return CONV_IMPLS[resolve_conv(name, backend)]
