"""Terms of a gradient-inversion objective, each a small pure function.

Images are NHWC. `x` is in the victim's normalized space; `x01` is in [0, 1].
`make_objective` assembles GI-PIP's objective

    1 - cos(g(x), g*)  +  λ_TV · TV(x)  +  λ_AS · | MSE(x01, AE(x01)) - c |,   x01 = clip(denorm(x), 0, 1)

with ONE cosine over all layers' gradients concatenated (as the authors' code does). A term
whose weight is 0 is not computed at all, so Inverting Gradients is GI-PIP with λ_AS = 0.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gipip_jax.client import make_loss_fn
from gipip_jax.data import DatasetInfo
from gipip_jax.victims import Victim

PyTree = Any
MATCHING = ("cosine", "l2")


def gradient_cosine_distance(grads: PyTree, target: PyTree) -> jax.Array:
    """1 - cosine similarity of two gradient trees, all leaves concatenated. Range [0, 2]."""
    dots = sum(jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(target)))
    g_sq = sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads))
    t_sq = sum(jnp.vdot(t, t) for t in jax.tree.leaves(target))
    return 1.0 - dots / jnp.maximum(jnp.sqrt(g_sq) * jnp.sqrt(t_sq), 1e-30)


def gradient_l2_distance(grads: PyTree, target: PyTree) -> jax.Array:
    """Sum over all leaves of the squared difference (DLG's matching loss). Range [0, inf)."""
    return sum(jnp.sum((g - t) ** 2) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(target)))


def total_variation(x: jax.Array) -> jax.Array:
    """Anisotropic TV of (B, H, W, C) images: mean |x[h+1]-x[h]| + mean |x[w+1]-x[w]|."""
    dy = jnp.abs(x[:, 1:, :, :] - x[:, :-1, :, :]).mean()
    dx = jnp.abs(x[:, :, 1:, :] - x[:, :, :-1, :]).mean()
    return dx + dy


def anomaly_score(x01: jax.Array, reconstruct: Callable[[jax.Array], jax.Array], offset: float) -> jax.Array:
    """GI-PIP's AS: |MSE(x01, AE(x01)) - c|, the AE error pulled toward a natural level c.

    x01: (B, H, W, C) in [0, 1]; `reconstruct` maps it to the same shape in [0, 1].
    """
    return jnp.abs(jnp.mean((x01 - reconstruct(x01)) ** 2) - offset)


class ObjectiveWeights(NamedTuple):
    """Weights of the optional terms (0 switches a term off) and the AS offset c.

    Python floats when building an objective; per-call values may be traced scalars, so a
    batched study gives every attack its own weights without recompiling.
    """

    tv: Any = 0.0
    anomaly: Any = 0.0
    anomaly_offset: Any = 0.0


def make_objective(
    victim: Victim,
    variables: dict,
    info: DatasetInfo,
    *,
    matching: str = "cosine",
    weights: ObjectiveWeights = ObjectiveWeights(),
    reconstruct: Callable[[jax.Array], jax.Array] | None = None,
    update_fn: Callable[[PyTree, jax.Array, jax.Array], PyTree] | None = None,
) -> Callable[..., tuple[jax.Array, dict]]:
    """Returns objective(x, target_grads, labels, weights=None) -> (loss, {term name: value}).

    x: (B, H, W, C) normalized candidate images; target_grads: the shared update tree;
    labels: int (B,) or soft (B, K). `weights` given here are the defaults and decide which terms
    exist (a term is built only when its weight here is > 0); a per-call `weights` replaces their
    values (e.g. traced per-attack values; a term off here stays off). `reconstruct` (the AE
    prior's forward pass on [0,1] images) is required when weights.anomaly > 0. `update_fn(params,
    x, labels)` is what the attacker simulates the client sharing; default: the FedSGD gradient of
    the mean CE loss.
    """
    if matching not in MATCHING:
        raise ValueError(f"unknown gradient matching {matching!r}; choose one of {MATCHING}")
    if weights.anomaly > 0 and reconstruct is None:
        raise ValueError("the anomaly-score term has a weight > 0 but no autoencoder was given")
    distance = gradient_cosine_distance if matching == "cosine" else gradient_l2_distance
    update_fn = update_fn or jax.grad(make_loss_fn(victim, variables))
    params = variables["params"]
    use_tv, use_anomaly = weights.tv > 0, weights.anomaly > 0
    defaults = weights

    def objective(x, target_grads, labels, weights=None):
        w = defaults if weights is None else weights
        terms = {"matching": distance(update_fn(params, x, labels), target_grads)}
        loss = terms["matching"]
        if use_tv:
            terms["tv"] = total_variation(x)
            loss = loss + w.tv * terms["tv"]
        if use_anomaly:
            x01 = jnp.clip(info.denormalize(x), 0.0, 1.0)
            terms["anomaly"] = anomaly_score(x01, reconstruct, w.anomaly_offset)
            loss = loss + w.anomaly * terms["anomaly"]
        return loss, terms

    return objective
