"""Terms of a gradient-inversion objective, each a small pure function.

Images are NHWC. `x` is in the victim's normalized space; `x01` is in [0, 1].
`make_objective` assembles GI-PIP's objective

    1 - cos(g(x), g*)  +  λ_TV · TV(x)  +  λ_AS · | MSE(x01, AE(x01)) - c |,   x01 = clamp(denorm(x), 0, 1) (torch.clamp's gradient)

with ONE cosine over all layers' gradients concatenated (as the authors' code does). A term
whose weight is 0 is not computed at all, so Inverting Gradients is GI-PIP with λ_AS = 0.
Optionally  + λ_BN · BN(x), the GradInversion / DeepInversion prior (`bn_statistics_loss`),
usable with any matching and optimizer, and + λ_feat · feature matching (`features.py`, seed
002's term: the classification layer's input recovered from the update).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gipip_jax.client import make_loss_fn
from gipip_jax.data import DatasetInfo
from gipip_jax.features import feature_matching_loss
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


def clamp01(x: jax.Array) -> jax.Array:
    """clip(x, 0, 1) with torch.clamp's gradient: 1 on [0, 1] including the bounds, 0 outside
    (jnp.clip passes 0.5 at a value exactly on a bound)."""
    return jnp.where((x >= 0.0) & (x <= 1.0), x, jnp.clip(x, 0.0, 1.0))


def anomaly_score(x01: jax.Array, reconstruct: Callable[[jax.Array], jax.Array], offset: float) -> jax.Array:
    """GI-PIP's AS: |MSE(x01, AE(x01)) - c|, the AE error pulled toward a natural level c.

    x01: (B, H, W, C) in [0, 1]; `reconstruct` maps it to the same shape in [0, 1].
    """
    return jnp.abs(jnp.mean((x01 - reconstruct(x01)) ** 2) - offset)


def batch_norm_statistics(victim: Victim, variables: dict, x: jax.Array) -> dict[str, tuple[jax.Array, ...]]:
    """{BN layer path 'A/B': (batch mean (C,), batch var (C,), running mean, running var)}, in call order.

    The victim runs in eval mode on x (B, H, W, C); batch statistics are those of each BN layer's
    input over all axes but the channel one (biased variance, as BN itself uses).
    """
    found = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            h = args[0]
            axes = tuple(range(h.ndim - 1))
            found["/".join(context.module.path)] = (
                h.mean(axis=axes), h.var(axis=axes), context.module.get_variable("batch_stats", "mean"),
                context.module.get_variable("batch_stats", "var"))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        victim.apply(variables, x)
    return found


def bn_statistics_loss(victim: Victim, variables: dict) -> Callable[[jax.Array], jax.Array]:
    """Returns bn(x) -> sum over BN layers of ||mean_b - mean_run||_2 + ||var_b - var_run||_2, >= 0.

    DeepInversion's feature-distribution regularizer, used by GradInversion as its BN prior: the
    batch statistics of the candidate images x (B, H, W, C) at every BN layer pulled toward the
    victim's running statistics. ValueError if the victim has no BatchNorm layer.
    """
    if "batch_stats" not in variables:
        raise ValueError(f"the BN-statistics term needs a victim with BatchNorm layers; {victim.name!r} has none")

    def bn(x):
        # optax.safe_norm: gradient 0 (not NaN) where the statistics already match exactly.
        return sum(optax.safe_norm(mean - run_mean, 0.0) + optax.safe_norm(var - run_var, 0.0)
                   for mean, var, run_mean, run_var in batch_norm_statistics(victim, variables, x).values())

    return bn


class ObjectiveWeights(NamedTuple):
    """Weights of the optional terms (0 switches a term off) and the AS offset c.

    tv: λ_TV; anomaly: λ_AS; anomaly_offset: c; bn_stats: λ_BN (BN-statistics prior, needs a
    victim with BatchNorm); features: λ_feat (feature matching against the classification layer's
    input recovered from the update, `features.py`).

    Python floats when building an objective; per-call values may be traced scalars, so a
    batched study gives every attack its own weights without recompiling.
    """

    tv: Any = 0.0
    anomaly: Any = 0.0
    anomaly_offset: Any = 0.0
    bn_stats: Any = 0.0
    features: Any = 0.0


def term_weight(weights: ObjectiveWeights, name: str):
    """The weight multiplying term `name` of an objective's terms dict: 1 for "matching", else the
    ObjectiveWeights field of the same name (tv, anomaly, bn_stats, features)."""
    return 1.0 if name == "matching" else getattr(weights, name)


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
    use_tv, use_anomaly, use_bn = weights.tv > 0, weights.anomaly > 0, weights.bn_stats > 0
    bn = bn_statistics_loss(victim, variables) if use_bn else None
    use_features = weights.features > 0
    feat = feature_matching_loss(victim, variables, info.num_classes) if use_features else None
    defaults = weights

    def objective(x, target_grads, labels, weights=None):
        w = defaults if weights is None else weights
        terms = {"matching": distance(update_fn(params, x, labels), target_grads)}
        loss = terms["matching"]
        if use_tv:
            terms["tv"] = total_variation(x)
            loss = loss + w.tv * terms["tv"]
        if use_anomaly:
            x01 = clamp01(info.denormalize(x))
            terms["anomaly"] = anomaly_score(x01, reconstruct, w.anomaly_offset)
            loss = loss + w.anomaly * terms["anomaly"]
        if use_bn:
            terms["bn_stats"] = bn(x)
            loss = loss + w.bn_stats * terms["bn_stats"]
        if use_features:
            terms["features"] = feat(x, target_grads, labels)
            loss = loss + w.features * terms["features"]
        return loss, terms

    return objective
