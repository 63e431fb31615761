"""The objective of a gradient-inversion attack: gradient matching plus named, weighted terms.

Images are NHWC. `x` is in the victim's normalized space; `x01` is in [0, 1].
`make_objective` assembles e.g. GI-PIP's objective

    1 - cos(g(x), g*)  +  λ_TV · TV(x)  +  λ_AS · | MSE(x01, AE(x01)) - c |,   x01 = clamp(denorm(x), 0, 1) (torch.clamp's gradient)

with ONE cosine over all layers' gradients concatenated (as the authors' code does). The terms
beside matching are a registry (`TERMS`, `register_term`): each declares its name, the config field
of its weight and of any per-attack option, and a builder. An objective is built with the terms the
config switches on and takes their settings as a pytree {name: {"weight": w, **options}}, so
Inverting Gradients is GI-PIP without the "anomaly" term. Registered: "tv"; "anomaly" (GI-PIP's
AS, option offset c); "bn_stats" (the GradInversion / DeepInversion BN prior,
`bn_statistics_loss`); "features" (feature matching against the classification layer's input
recovered from the update, `features.py`). A new term is one module calling `register_term`.
"""

from __future__ import annotations

from collections.abc import Mapping
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


class TermContext(NamedTuple):
    """What a term's builder may use: the attacked victim and its variables, the dataset's info,
    and the AE prior's forward pass `reconstruct` ([0, 1] images -> [0, 1] images, or None)."""

    victim: Victim
    variables: dict
    info: DatasetInfo
    reconstruct: Callable[[jax.Array], jax.Array] | None


class Term(NamedTuple):
    """A weighted term of the objective.

    name: its key in the objective's settings pytree, in the terms it returns and in records' `terms`;
    weight_field: the config field holding its weight (`attack.<field>`, or `grid.<field>` in a study);
    build(context) -> value(x, target_grads, labels, **options) -> scalar float32, x (B, H, W, C)
      normalized candidates; options: {option: config field} of per-attack values besides the weight
      (the anomaly score's offset c: {"offset": "as_offset"}).
    """

    name: str
    weight_field: str
    build: Callable[[TermContext], Callable[..., jax.Array]]
    options: dict = {}


TERMS: dict[str, Term] = {}


def register_term(term: Term) -> Term:
    """Adds a term to the vocabulary of objectives and configs (its name and fields must be new)."""
    used = {t.weight_field for t in TERMS.values()} | {f for t in TERMS.values() for f in t.options.values()}
    if term.name in TERMS or term.name == "matching" or term.weight_field in used or used & set(term.options.values()):
        raise ValueError(f"objective term {term.name!r} or one of its config fields is already registered")
    TERMS[term.name] = term
    return term


def _anomaly(context: TermContext):
    if context.reconstruct is None:
        raise ValueError("the anomaly-score term is in the objective but no autoencoder was given (prior.checkpoint)")

    def value(x, target_grads, labels, offset):
        return anomaly_score(clamp01(context.info.denormalize(x)), context.reconstruct, offset)

    return value


def _tv(context: TermContext):
    return lambda x, target_grads, labels: total_variation(x)


def _bn_stats(context: TermContext):
    bn = bn_statistics_loss(context.victim, context.variables)
    return lambda x, target_grads, labels: bn(x)


def _features(context: TermContext):
    return feature_matching_loss(context.victim, context.variables, context.info.num_classes)


register_term(Term("tv", "tv_weight", _tv))
register_term(Term("anomaly", "as_weight", _anomaly, {"offset": "as_offset"}))
register_term(Term("bn_stats", "bn_weight", _bn_stats))
register_term(Term("features", "feature_weight", _features))


def term_settings(setting: Mapping[str, Any], names) -> dict:
    """The objective settings {name: {"weight": w, option: value}} of terms `names`, read from a flat
    setting of config fields (e.g. {"tv_weight": 1e-6, "as_weight": 1e-4, "as_offset": 0.001})."""
    return {name: {"weight": setting.get(TERMS[name].weight_field, 0.0),
                   **{option: setting[field] for option, field in TERMS[name].options.items()}}
            for name in names}


def terms_in_use(settings) -> list[str]:
    """The terms an objective needs for flat settings `settings` (one per attack): those whose weight
    is > 0 in at least one of them, in registration order."""
    settings = list(settings)
    return [name for name, term in TERMS.items() if any((s.get(term.weight_field) or 0.0) > 0 for s in settings)]


def term_weight(settings: Mapping, name: str):
    """The weight multiplying term `name` of an objective's terms dict: 1 for "matching"."""
    return 1.0 if name == "matching" else settings[name]["weight"]


def make_objective(
    victim: Victim,
    variables: dict,
    info: DatasetInfo,
    *,
    matching: str = "cosine",
    terms: Mapping[str, Mapping] | None = None,
    reconstruct: Callable[[jax.Array], jax.Array] | None = None,
    update_fn: Callable[..., PyTree] | None = None,
    attacker=None,
) -> Callable[..., tuple[jax.Array, dict]]:
    """Returns objective(x, target_grads, labels, terms=None) -> (loss, {term name: value}).

    loss = matching + sum over `terms` of weight * value. x: (B, H, W, C) normalized candidate
    images; target_grads: the shared update tree; labels: int (B,) or soft (B, K). `terms`
    ({name: {"weight": w, **options}}, names from TERMS) decides which terms exist and gives their
    default settings; a per-call `terms` of the same names replaces the values (e.g. traced
    per-attack values, so one compiled program serves every weight). `reconstruct` (the AE prior's
    forward pass on [0, 1] images) is needed by "anomaly". `update_fn(params, x, labels)` is what
    the attacker simulates the client sharing; default: the FedSGD gradient of the mean CE loss.
    `attacker` (an `adaptive.AttackerModel`; needs `update_fn` to take attacker-side step hooks, as
    threat_models.attacker_update_fn's does) makes matching defense-aware: the settings then also
    hold "matching", the attacker's knowledge of the defense (adaptive.knowledge).
    """
    if matching not in MATCHING:
        raise ValueError(f"unknown gradient matching {matching!r}; choose one of {MATCHING}")
    defaults = dict(terms or {})
    unknown = set(defaults) - set(TERMS) - ({"matching"} if attacker is not None else set())
    if unknown:
        raise ValueError(f"unknown objective term(s) {sorted(unknown)}; registered: {sorted(TERMS)}")
    distance = gradient_cosine_distance if matching == "cosine" else gradient_l2_distance
    if attacker is not None and update_fn is None:
        raise ValueError("a defense-aware attacker needs the update_fn it passes its step hooks to "
                         "(threat_models.attacker_update_fn)")
    update_fn = update_fn or jax.grad(make_loss_fn(victim, variables))
    params = variables["params"]
    context = TermContext(victim, variables, info, reconstruct)
    values = {name: TERMS[name].build(context) for name in TERMS if name in defaults}
    expected = set(values) | ({"matching"} if attacker is not None else set())

    def objective(x, target_grads, labels, terms=None):
        settings = defaults if terms is None else terms
        if set(settings) != expected:
            raise ValueError(f"the objective was built with settings for {sorted(expected)}; got {sorted(settings)}")
        if attacker is None:
            found = {"matching": distance(update_fn(params, x, labels), target_grads)}
        else:
            k = settings["matching"]
            candidate = attacker.update(update_fn, params, x, labels, target_grads, k)
            found = {"matching": attacker.distance(candidate, target_grads, k, distance)}
        loss = found["matching"]
        for name, value in values.items():
            options = {k: v for k, v in settings[name].items() if k != "weight"}
            found[name] = value(x, target_grads, labels, **options)
            loss = loss + settings[name]["weight"] * found[name]
        return loss, found

    return objective
