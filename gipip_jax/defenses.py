"""Defenses a client applies to what it shares, as optax-style gradient transformations.

Every transform maps an update tree (the params-shaped FedSGD gradient or FedAvg weight
difference, float leaves of any shape) to a tree of the same structure; randomness comes from a
PRNG key held in the transform's state (split at every call), so `init` then `update` is pure and
the same key gives the same numbers. They compose with `optax.chain`; `make_defense` builds a chain
from config entries:

    {"name": "clip", "max_norm": C}                       scale the update to global L2 norm <= C
    {"name": "gaussian", "std": s}                        add N(0, s^2) to every entry
    {"name": "laplace", "std": s}                         add Laplace(0, b = s / sqrt(2)) (std s)
    {"name": "prune", "sparsity": p, "scope": S}          zero the floor(p * n) smallest-|.| entries
                                                          of each tensor (S = "per_tensor") or of
                                                          the whole tree (S = "global")

Defenses that need the client's batch (DP-SGD's per-example clipping, dropout in the victim,
Soteria's representation pruning) are settings of `threat_models.client_update`; their per-batch
pieces are here (`dp_sgd_gradient`, `soteria_mask`). `specs_from_config` turns the flat config
fields a study grid sweeps (`DEFENSE_DEFAULTS`) into a chain's entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
PRUNE_SCOPES = ("per_tensor", "global")

# Flat, sweepable defense fields of a config and their "off" values. The first four are applied to
# the shared update by `make_defense(specs_from_config(...))`; the last four are client-step
# settings of `threat_models.client_update` (see `client_settings_from_config`).
DEFENSE_DEFAULTS: dict[str, Any] = {
    "clip_norm": 0.0,            # global-norm clipping of the update; 0: off
    "prune_sparsity": 0.0,       # fraction of entries zeroed; 0: off
    "prune_scope": "per_tensor",  # or "global"
    "noise": "gaussian",         # or "laplace"
    "noise_std": 0.0,            # std of the additive noise; 0: off
    "dp_clip_norm": 0.0,         # DP-SGD per-example clipping norm C; 0: no DP-SGD
    "dp_noise_multiplier": 0.0,  # DP-SGD noise std / C
    "dropout_rate": 0.0,         # dropout on the victim's classifier input during the client step
    "soteria_pruning": 0.0,      # Soteria: fraction of fc-layer input features pruned
}
CLIENT_DEFENSE_FIELDS = ("dp_clip_norm", "dp_noise_multiplier", "dropout_rate", "soteria_pruning")


class KeyState(NamedTuple):
    """State of a random transform: the PRNG key for its next call."""

    key: jax.Array


def add_laplace_noise(std: float, key: jax.Array) -> optax.GradientTransformation:
    """Adds i.i.d. Laplace(0, b) noise with b = std / sqrt(2) (so its std is `std`) to every entry."""

    def init(params):
        del params
        return KeyState(key)

    def update(updates, state, params=None):
        del params
        next_key, sample_key = jax.random.split(state.key)
        noise = optax.tree.random_like(sample_key, updates, sampler=jax.random.laplace)
        return optax.tree.add_scale(updates, std / math.sqrt(2.0), noise), KeyState(next_key)

    return optax.GradientTransformation(init, update)


def add_gaussian_noise(std: float, key: jax.Array) -> optax.GradientTransformation:
    """Adds i.i.d. N(0, std^2) noise to every entry (optax.add_noise with a constant variance)."""
    return optax.add_noise(eta=std**2, gamma=0.0, key=key)


def _prune_flat(flat: jax.Array, sparsity) -> jax.Array:
    """Zeroes exactly floor(sparsity * n) entries of the 1-D `flat`: those smallest in |.|
    (ties broken by position). `sparsity` in [0, 1] may be traced."""
    size = flat.shape[0]
    pruned = jnp.floor(sparsity * size).astype(jnp.int32)
    order = jnp.argsort(jnp.abs(flat), stable=True)
    keep = jnp.zeros(size, bool).at[order].set(jnp.arange(size) >= pruned)
    return jnp.where(keep, flat, jnp.zeros_like(flat))


def prune_updates(updates: PyTree, sparsity, scope: str = "per_tensor") -> PyTree:
    """Magnitude pruning: the floor(sparsity * n) entries smallest in |.| become 0.

    scope "per_tensor": n is each leaf's size, so every tensor keeps its own top entries
    (DLG's per-layer percentile pruning); "global": one ranking over all leaves (global top-k).
    """
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; choose one of {PRUNE_SCOPES}")
    if scope == "per_tensor":
        return jax.tree.map(lambda u: _prune_flat(u.ravel(), sparsity).reshape(u.shape), updates)
    leaves, treedef = jax.tree.flatten(updates)
    flat = _prune_flat(jnp.concatenate([u.ravel() for u in leaves]), sparsity)
    offsets = [0]
    for u in leaves:
        offsets.append(offsets[-1] + u.size)
    pieces = [flat[a:b].reshape(u.shape) for u, a, b in zip(leaves, offsets[:-1], offsets[1:])]
    return jax.tree.unflatten(treedef, pieces)


def prune(sparsity: float, scope: str = "per_tensor") -> optax.GradientTransformation:
    """`prune_updates` as a stateless transform."""
    if scope not in PRUNE_SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r}; choose one of {PRUNE_SCOPES}")
    return optax.stateless(lambda updates, params=None: prune_updates(updates, sparsity, scope))


def _number(entry: Mapping, field: str, low: float, high: float = math.inf, *, high_open: bool = False) -> float:
    if field not in entry:
        raise ValueError(f"defense {entry['name']!r} needs the field {field!r} (got {dict(entry)})")
    value = entry[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"defense {entry['name']!r}: {field} must be a number, got {value!r}")
    value = float(value)
    if not (low <= value and (value < high if high_open else value <= high)):
        bound = f"[{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"defense {entry['name']!r}: {field} must be in {bound}, got {value}")
    return value


_FIELDS = {"clip": {"max_norm"}, "gaussian": {"std"}, "laplace": {"std"}, "prune": {"sparsity", "scope"}}
_CLIENT_STEP = {"dp_sgd", "dropout", "soteria"}


def make_defense(specs: Sequence[Mapping], key: jax.Array) -> optax.GradientTransformation:
    """Builds `optax.chain` of the defenses `specs` (dicts with a "name"; see the module docstring),
    applied in order; each random one gets `fold_in(key, position)`. [] is the identity."""
    transforms = []
    for position, entry in enumerate(specs):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ValueError(f"defense entry {position} must be a dict with a 'name', got {entry!r}")
        name = entry["name"]
        if name in _CLIENT_STEP:
            raise ValueError(f"defense {name!r} acts on the client's batch, not on the shared update; "
                             "give it to threat_models.client_update instead")
        if name not in _FIELDS:
            raise ValueError(f"unknown defense {name!r}; choose one of {sorted(_FIELDS)}")
        extra = set(entry) - _FIELDS[name] - {"name"}
        if extra:
            raise ValueError(f"defense {name!r} has unknown fields {sorted(extra)}; it takes {sorted(_FIELDS[name])}")
        entry_key = jax.random.fold_in(key, position)
        if name == "clip":
            max_norm = _number(entry, "max_norm", 0.0)
            if max_norm == 0.0:
                raise ValueError("defense 'clip': max_norm must be > 0")
            transforms.append(optax.clip_by_global_norm(max_norm))
        elif name == "gaussian":
            transforms.append(add_gaussian_noise(_number(entry, "std", 0.0), entry_key))
        elif name == "laplace":
            transforms.append(add_laplace_noise(_number(entry, "std", 0.0), entry_key))
        else:
            scope = entry.get("scope", "per_tensor")
            if scope not in PRUNE_SCOPES:
                raise ValueError(f"defense 'prune': unknown scope {scope!r}; choose one of {PRUNE_SCOPES}")
            transforms.append(prune(_number(entry, "sparsity", 0.0, 1.0, high_open=True), scope))
    return optax.chain(*transforms) if transforms else optax.identity()


def check_defense_config(config: Mapping) -> dict:
    """`config` (a dict of `DEFENSE_DEFAULTS` fields, any subset) completed with the defaults;
    an unknown field or a negative value raises ValueError."""
    unknown = set(config) - set(DEFENSE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown defense fields {sorted(unknown)}; known: {sorted(DEFENSE_DEFAULTS)}")
    full = {**DEFENSE_DEFAULTS, **config}
    for field, value in full.items():
        if isinstance(DEFENSE_DEFAULTS[field], float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"defense field {field} must be a number >= 0, got {value!r}")
    if full["noise"] not in ("gaussian", "laplace"):
        raise ValueError(f"defense field noise must be 'gaussian' or 'laplace', got {full['noise']!r}")
    for field in ("prune_sparsity", "dropout_rate", "soteria_pruning"):
        if full[field] >= 1:
            raise ValueError(f"defense field {field} must be < 1, got {full[field]}")
    if full["dp_noise_multiplier"] > 0 and full["dp_clip_norm"] == 0:
        raise ValueError("defense field dp_noise_multiplier > 0 needs dp_clip_norm > 0 (DP-SGD's clipping norm)")
    return full


def specs_from_config(config: Mapping) -> list[dict]:
    """The update-tree part of a flat defense config, in the fixed order clip -> prune -> noise
    (fields at their "off" value are left out)."""
    full = check_defense_config(config)
    specs = []
    if full["clip_norm"] > 0:
        specs.append({"name": "clip", "max_norm": full["clip_norm"]})
    if full["prune_sparsity"] > 0:
        specs.append({"name": "prune", "sparsity": full["prune_sparsity"], "scope": full["prune_scope"]})
    if full["noise_std"] > 0:
        specs.append({"name": full["noise"], "std": full["noise_std"]})
    return specs


def client_settings_from_config(config: Mapping) -> dict:
    """The client-step part of a flat defense config: keyword settings of `threat_models.client_update`."""
    full = check_defense_config(config)
    return {field: float(full[field]) for field in CLIENT_DEFENSE_FIELDS}


def dp_sgd_gradient(per_example_grads: PyTree, key: jax.Array, clip_norm, noise_multiplier) -> PyTree:
    """DP-SGD's noisy mean gradient (Abadi et al. 2016): every per-example gradient is scaled to
    global L2 norm <= clip_norm, the B of them summed, N(0, (noise_multiplier * clip_norm)^2) added
    to every entry, and the result divided by B. per_example_grads: leaves with a leading axis B."""
    batch = jax.tree.leaves(per_example_grads)[0].shape[0]
    total, _ = optax.per_example_global_norm_clip(jax.tree.leaves(per_example_grads), clip_norm)
    total = jax.tree.unflatten(jax.tree.structure(per_example_grads), total)
    noise = optax.tree.random_like(key, total, sampler=jax.random.normal)
    return jax.tree.map(lambda t, n: (t + noise_multiplier * clip_norm * n) / batch, total, noise)


class ClassifierInput(NamedTuple):
    """Where the victim's last dense layer sits: its param path and its input of one call."""

    path: tuple[str, ...]
    features: jax.Array  # (B, F)


def classifier_input(apply: Callable[[], jax.Array]) -> ClassifierInput:
    """Runs `apply()` (a victim forward pass) and returns the input of the last `nn.Dense` it called."""
    seen: list[ClassifierInput] = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            seen.append(ClassifierInput(tuple(context.module.path), args[0]))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        apply()
    if not seen:
        raise ValueError("the victim has no dense layer for Soteria to defend")
    return seen[-1]


def soteria_mask(victim, variables: dict, x: jax.Array, pruning: float) -> tuple[tuple[str, ...], jax.Array]:
    """Soteria (Sun et al., CVPR 2021, as in their released code): for each input feature f of the
    victim's last dense layer (the representation r, (B, F)), score_f = sum_b ||dr_bf / dx_b|| / r_bf;
    the floor(pruning * F) features of smallest |score| are pruned. Returns (the layer's param path,
    a (F, 1) float mask, 0 for pruned rows of its (F, K) kernel). x: (B, H, W, C) normalized."""

    def features(xb):
        return classifier_input(lambda: victim.apply(variables, xb[None])).features[0]

    path = classifier_input(lambda: victim.apply(variables, x[:1])).path
    reps = jax.vmap(features)(x)                                            # (B, F)
    jac = jax.vmap(jax.jacrev(features))(x)                                 # (B, F, H, W, C)
    norms = jnp.sqrt(jnp.sum(jac.reshape(*jac.shape[:2], -1) ** 2, axis=-1))  # (B, F)
    ratios = jnp.where(reps != 0, norms / jnp.where(reps != 0, reps, 1.0), jnp.inf)
    score = jnp.abs(ratios.sum(axis=0))
    size = score.shape[0]
    pruned = int(math.floor(pruning * size))
    order = jnp.argsort(score, stable=True)
    keep = jnp.zeros(size, bool).at[order].set(jnp.arange(size) >= pruned)
    return path, keep.astype(jnp.float32)[:, None]


def apply_soteria(updates: PyTree, path: tuple[str, ...], mask: jax.Array) -> PyTree:
    """`updates` with the kernel of the dense layer at `path` multiplied by `mask` (F, 1)."""
    def visit(tree, depth):
        if depth == len(path):
            return {**tree, "kernel": tree["kernel"] * mask}
        return {**tree, path[depth]: visit(tree[path[depth]], depth + 1)}

    return visit(updates, 0)
