"""Defenses a client applies, as a registry: each `Defense` declares its flat config fields, their
validation and how it is built, once.

A defense acts either on the shared update (kind "update": an optax `GradientTransformation` on the
params-shaped FedSGD gradient or FedAvg weight-difference tree, randomness from a PRNG key in its
state) or inside the client's computation (kind "step": `StepHooks` the client step calls). The
built-in ones, in registry order (the order update defenses are applied in):

    clip     clip_norm C                       update scaled to global L2 norm <= C
    prune    prune_sparsity p, prune_scope S   the floor(p * n) smallest-|.| entries of each tensor
                                               (S "per_tensor") or of the whole tree (S "global") zeroed
    noise    noise ("gaussian"|"laplace"),     N(0, s^2) or Laplace(0, s / sqrt(2)) (std s) added to
             noise_std s                       every entry
    dp_sgd   dp_clip_norm C,                   every step's gradient: the mean of per-example gradients
             dp_noise_multiplier z             clipped to norm C, plus N(0, (z C)^2) / B noise
    dropout  dropout_rate p                    inverted dropout on the victim's last dense layer's input
    soteria  soteria_pruning p                 the fraction p of that input's features pruned from the
                                               fc kernel's rows of the shared update

A config holds the flat fields (`DEFENSE_DEFAULTS`: every field at its "off" value); `parse` checks
them once and gives the `DefenseSetting` that `threat_models.client_update(..., defense=...)` runs.
`register` adds a defense (its fields become config and study-grid fields).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any
KINDS = ("update", "step")
PRUNE_SCOPES = ("per_tensor", "global")
NOISES = ("gaussian", "laplace")
# logits(params, x (B, H, W, C), key) -> (B, K); loss(params, x, labels, key) -> scalar;
# step_gradient(params, x, labels, key) -> params-shaped tree.
Forward = Callable[[PyTree, jax.Array, jax.Array], jax.Array]
Loss = Callable[[PyTree, jax.Array, jax.Array, jax.Array], jax.Array]
StepGradient = Callable[[PyTree, jax.Array, jax.Array, jax.Array], PyTree]


class StepHooks(NamedTuple):
    """Where a step defense changes the client's computation (None: not there).

    forward(victim, variables, logits) -> logits: wraps the victim's eval-mode forward.
    gradient(loss) -> step_gradient: replaces jax.grad(loss); at most one defense on may set it.
    shared(tree, victim, variables, x) -> tree: rewrites the client's result (FedSGD gradient or
      FedAvg difference) before the update defenses; x (B, H, W, C) is the client's batch.
    """

    forward: Callable[[Any, dict, Forward], Forward] | None = None
    gradient: Callable[[Loss], StepGradient] | None = None
    shared: Callable[[PyTree, Any, dict, jax.Array], PyTree] | None = None


class AttackerContext(NamedTuple):
    """What an attacker side may use, fixed per study: the attacked victim and its variables, the
    param path of its last dense layer, the client's batch size, and the threat model's scale of
    what a client adds to its step gradient on the shared update: `noise_scale` (FedSGD 1; FedAvg
    local_lr * sqrt(local_steps)) and the number of `clients` in the secure aggregate."""

    victim: Any
    variables: dict
    classifier: tuple[str, ...]
    batch_size: int
    step_batch_size: int
    noise_scale: float
    clients: int


class Adaptation(NamedTuple):
    """The attacker-side counterpart of a defense: what an attacker who knows it does about it.

    knows: what the attacker is assumed to know, one sentence (docstrings, records).
    knowledge(entry) -> {name: float}: the defense's numbers it uses, read from the defense entry
      (traced per attack, with "on" 1.0 when the attack adapts to a defense that is on, else 0.0;
      every function below must give finite values, and change nothing, when "on" is 0).
    candidate(tree, target, k, context) -> tree: applied to the attacker's simulated update before
      matching (a clip, or masks read off the observed update `target`).
    steps(k, target, context, samples) -> `samples` StepHooks for the attacker's simulated client
      step (e.g. a per-example clip, dropout masks); the simulated update is their mean.
    samples(context) -> how many samples `steps` needs (1 when it is deterministic).
    noise(k, context) -> (Gaussian variance, Laplace scale b) the defense adds to each entry of the
      shared (aggregate) update; matching becomes that noise's negative log-likelihood.
    """

    knows: str
    knowledge: Callable[[Mapping], dict]
    candidate: Callable | None = None
    steps: Callable | None = None
    samples: Callable[[AttackerContext], int] = lambda context: 1
    noise: Callable | None = None


class Defense(NamedTuple):
    """One registered defense. An entry is {"name": name, **every field}.

    fields: its flat config fields and their "off" values, in order (disjoint from other defenses').
    switch: the field that turns it on: the defense is off while it has its "off" value.
    validate(entry): raises ValueError naming the bad field and its allowed values.
    build: kind "update": build(entry, key) -> optax.GradientTransformation;
           kind "step": build(entry) -> StepHooks.
    attacker: its `Adaptation` (how an attacker who knows it matches the update), or None.
    stronger(entry) -> [{field: value}, ...]: settings of its fields stronger than `entry` (which may
      be off), weakest first (what an audit tries next; `ladder` builds it).
    """

    name: str
    kind: str
    fields: Mapping[str, Any]
    switch: str
    validate: Callable[[Mapping], None]
    build: Callable[..., Any]
    attacker: Adaptation | None = None
    stronger: Callable[[Mapping], list[dict]] = lambda entry: []

    def is_on(self, entry: Mapping) -> bool:
        return entry[self.switch] != self.fields[self.switch]


REGISTRY: dict[str, Defense] = {}
# Every registered field and its "off" value, in registry order (updated by `register`).
DEFENSE_DEFAULTS: dict[str, Any] = {}


def register(defense: Defense) -> Defense:
    """Adds `defense` to the registry (after the ones there) and its fields to DEFENSE_DEFAULTS.
    Register before importing gipip_jax.study for its fields to be study-grid fields."""
    if defense.name in REGISTRY:
        raise ValueError(f"a defense named {defense.name!r} is already registered")
    if defense.kind not in KINDS:
        raise ValueError(f"defense {defense.name!r}: kind must be one of {KINDS}, got {defense.kind!r}")
    if defense.switch not in defense.fields:
        raise ValueError(f"defense {defense.name!r}: switch {defense.switch!r} is not one of its fields")
    taken = set(defense.fields) & {*DEFENSE_DEFAULTS, "name"}
    if taken:
        raise ValueError(f"defense {defense.name!r}: fields {sorted(taken)} are already taken")
    defense.validate({"name": defense.name, **defense.fields})   # its "off" values must be valid
    REGISTRY[defense.name] = defense
    DEFENSE_DEFAULTS.update(defense.fields)
    return defense


def check_number(entry: Mapping, field: str, low: float = 0.0, high: float = math.inf, *,
                 high_open: bool = False) -> None:
    """Raises ValueError unless entry[field] is a number (not a bool) in [low, high] ([low, high) if high_open)."""
    value = entry[field]
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not (number and low <= value and (value < high if high_open else value <= high)):
        bound = f"[{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
        raise ValueError(f"defense field {field} must be a number in {bound}, got {value!r}")


def check_choice(entry: Mapping, field: str, choices: Sequence[str]) -> None:
    """Raises ValueError unless entry[field] is one of `choices`."""
    if entry[field] not in choices:
        raise ValueError(f"defense field {field} must be one of {tuple(choices)}, got {entry[field]!r}")


@dataclasses.dataclass(frozen=True)
class DefenseSetting:
    """A checked flat defense config (see `parse`).

    fields: every DEFENSE_DEFAULTS field, the given values over the defaults (the canonical setting).
    updates: entries of the update defenses that are on, in registry order (clip -> prune -> noise).
    steps: entries of the step defenses that are on, in registry order.
    """

    fields: dict
    updates: tuple[dict, ...]
    steps: tuple[dict, ...]

    def update_transform(self, key: jax.Array) -> optax.GradientTransformation:
        """optax.chain of `updates`; entry i gets fold_in(key, i). No updates: the identity."""
        return _chain(self.updates, key)

    def step_hooks(self) -> tuple[StepHooks, ...]:
        """The StepHooks of `steps`, in order."""
        return _step_hooks(self.steps)


def _entry(name: str, given: Mapping) -> dict:
    """{"name": name, **every field of the defense}: `given` (a subset of its fields) over its
    "off" values, validated."""
    defense = REGISTRY[name]
    unknown = set(given) - set(defense.fields)
    if unknown:
        raise ValueError(f"defense {name!r} has unknown fields {sorted(unknown)}; it takes {list(defense.fields)}")
    entry = {"name": name, **defense.fields, **given}
    defense.validate(entry)
    return entry


def _chain(entries: Sequence[Mapping], key: jax.Array) -> optax.GradientTransformation:
    transforms = [REGISTRY[e["name"]].build(e, jax.random.fold_in(key, i)) for i, e in enumerate(entries)]
    return optax.chain(*transforms) if transforms else optax.identity()


def _step_hooks(entries: Sequence[Mapping]) -> tuple[StepHooks, ...]:
    hooks = tuple(REGISTRY[e["name"]].build(e) for e in entries)
    replacing = [e["name"] for e, h in zip(entries, hooks) if h.gradient is not None]
    if len(replacing) > 1:
        raise ValueError(f"defenses {replacing} all replace the client step's gradient; turn on one of them")
    return hooks


def parse(flat: Mapping) -> DefenseSetting:
    """The DefenseSetting of `flat` (any subset of DEFENSE_DEFAULTS' fields), every field checked
    by its defense; an unknown field or a bad value raises ValueError."""
    unknown = set(flat) - set(DEFENSE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown defense fields {sorted(unknown)}; known: {list(DEFENSE_DEFAULTS)}")
    entries = [_entry(d.name, {f: flat[f] for f in d.fields if f in flat}) for d in REGISTRY.values()]
    on = [e for e in entries if REGISTRY[e["name"]].is_on(e)]
    steps = tuple(e for e in on if REGISTRY[e["name"]].kind == "step")
    _step_hooks(steps)   # checks that at most one replaces the gradient
    return DefenseSetting(fields={**DEFENSE_DEFAULTS, **flat},
                          updates=tuple(e for e in on if REGISTRY[e["name"]].kind == "update"), steps=steps)


def describe(flat: Mapping) -> str:
    """A flat setting's defense in words: its defense fields that differ from DEFENSE_DEFAULTS, in their
    order ("noise=laplace, noise_std=0.01"), or "none". Other keys (a record's λs, `adaptive`) are
    ignored; the defense fields are checked as `parse` checks them."""
    fields = parse({f: flat[f] for f in DEFENSE_DEFAULTS if f in flat}).fields
    return ", ".join(f"{f}={fields[f]}" for f in DEFENSE_DEFAULTS if fields[f] != DEFENSE_DEFAULTS[f]) or "none"


def make_defense(specs: Sequence[Mapping], key: jax.Array) -> optax.GradientTransformation:
    """optax.chain of the update defenses `specs` ({"name": ..., some of its fields}; the others
    at their "off" values), applied in the given order; entries that are off are left out and the
    i-th one kept gets fold_in(key, i). [] is the identity."""
    updates, entries = [d.name for d in REGISTRY.values() if d.kind == "update"], []
    for position, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"defense entry {position} must be a dict with a 'name', got {spec!r}")
        name = spec["name"]
        if name in REGISTRY and name not in updates:
            raise ValueError(f"defense {name!r} acts on the client's step, not on the shared update; "
                             "give its fields to defenses.parse and the setting to threat_models.client_update")
        if name not in updates:
            raise ValueError(f"unknown update defense {name!r}; choose one of {updates}")
        entries.append(_entry(name, {f: v for f, v in spec.items() if f != "name"}))
    return _chain([e for e in entries if REGISTRY[e["name"]].is_on(e)], key)


# ----- update defenses -----

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


def _check_prune(entry: Mapping) -> None:
    check_number(entry, "prune_sparsity", 0.0, 1.0, high_open=True)
    check_choice(entry, "prune_scope", PRUNE_SCOPES)


def _check_noise(entry: Mapping) -> None:
    check_choice(entry, "noise", NOISES)
    check_number(entry, "noise_std")


def _build_noise(entry: Mapping, key: jax.Array) -> optax.GradientTransformation:
    noise = add_gaussian_noise if entry["noise"] == "gaussian" else add_laplace_noise
    return noise(float(entry["noise_std"]), key)


# ----- step defenses -----

def dp_sgd_gradient(per_example_grads: PyTree, key: jax.Array, clip_norm, noise_multiplier) -> PyTree:
    """DP-SGD's noisy mean gradient (Abadi et al. 2016): every per-example gradient is scaled to
    global L2 norm <= clip_norm, the B of them summed, N(0, (noise_multiplier * clip_norm)^2) added
    to every entry, and the result divided by B. per_example_grads: leaves with a leading axis B."""
    batch = jax.tree.leaves(per_example_grads)[0].shape[0]
    total, _ = optax.per_example_global_norm_clip(jax.tree.leaves(per_example_grads), clip_norm)
    total = jax.tree.unflatten(jax.tree.structure(per_example_grads), total)
    noise = optax.tree.random_like(key, total, sampler=jax.random.normal)
    return jax.tree.map(lambda t, n: (t + noise_multiplier * clip_norm * n) / batch, total, noise)


def _check_dp_sgd(entry: Mapping) -> None:
    check_number(entry, "dp_clip_norm")
    check_number(entry, "dp_noise_multiplier")
    if entry["dp_noise_multiplier"] > 0 and entry["dp_clip_norm"] == 0:
        raise ValueError("defense field dp_noise_multiplier > 0 needs dp_clip_norm > 0 (DP-SGD's clipping norm)")


def _build_dp_sgd(entry: Mapping) -> StepHooks:
    """The step gradient is `dp_sgd_gradient` of the per-example gradients (example b's loss gets
    key split(fold_in(key, 0), B)[b], e.g. for dropout; the noise fold_in(key, 1))."""
    clip_norm, noise_multiplier = float(entry["dp_clip_norm"]), float(entry["dp_noise_multiplier"])

    def gradient(loss: Loss) -> StepGradient:
        def dp_gradient(params, x, labels, key):
            example_keys = jax.random.split(jax.random.fold_in(key, 0), x.shape[0])
            one = lambda xi, yi, ki: jax.grad(loss)(params, xi[None], yi[None], ki)
            per_example = jax.vmap(one)(x, labels, example_keys)
            return dp_sgd_gradient(per_example, jax.random.fold_in(key, 1), clip_norm, noise_multiplier)

        return dp_gradient

    return StepHooks(gradient=gradient)


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


def classifier_path(victim, variables: dict) -> tuple[str, ...]:
    """The param path of the victim's last dense layer (the one dropout and Soteria act on)."""
    dummy = jnp.zeros((1, *victim.image_shape), jnp.float32)
    return classifier_input(lambda: victim.apply(variables, dummy)).path


def _rewrite_classifier_input(path: tuple[str, ...], rewrite: Callable[[jax.Array, jax.Array], jax.Array]):
    """A StepHooks.forward: the input (B, F) of the dense layer at `path` replaced by rewrite(input, key)."""

    def forward(victim, variables: dict, logits: Forward) -> Forward:
        def rewritten(params, x, key):
            def intercept(next_fun, args, kwargs, context):
                if isinstance(context.module, nn.Dense) and tuple(context.module.path) == path \
                        and context.method_name == "__call__":
                    args = (rewrite(args[0], key), *args[1:])
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(intercept):
                return logits(params, x, key)

        return rewritten

    return forward


def _build_dropout(entry: Mapping) -> StepHooks:
    """Inverted dropout of the rate on the input of the victim's last dense layer, a fresh mask
    from each call's key (the victims have no dropout layers of their own)."""
    rate = float(entry["dropout_rate"])

    def drop(features, key):
        keep = jax.random.bernoulli(key, 1.0 - rate, features.shape)
        return jnp.where(keep, features / (1.0 - rate), 0.0)

    def forward(victim, variables: dict, logits: Forward) -> Forward:
        return _rewrite_classifier_input(classifier_path(victim, variables), drop)(victim, variables, logits)

    return StepHooks(forward=forward)


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


def map_kernel(updates: PyTree, path: tuple[str, ...], fn: Callable[[jax.Array], jax.Array]) -> PyTree:
    """`updates` with the kernel of the dense layer at `path` replaced by fn(kernel)."""
    def visit(tree, depth):
        if depth == len(path):
            return {**tree, "kernel": fn(tree["kernel"])}
        return {**tree, path[depth]: visit(tree[path[depth]], depth + 1)}

    return visit(updates, 0)


def kernel_at(updates: PyTree, path: tuple[str, ...]) -> jax.Array:
    """The kernel (F, K) of the dense layer at `path` in a params-shaped tree."""
    if path is None:
        raise ValueError("the victim has no dense layer for the defense-aware attacker to read")
    for part in path:
        updates = updates[part]
    return updates["kernel"]


def apply_soteria(updates: PyTree, path: tuple[str, ...], mask: jax.Array) -> PyTree:
    """`updates` with the kernel of the dense layer at `path` multiplied by `mask` (F, 1)."""
    return map_kernel(updates, path, lambda kernel: kernel * mask)


def _build_soteria(entry: Mapping) -> StepHooks:
    """The client's result with the fc kernel rows of `soteria_mask` (on its batch, at the initial
    params) zeroed."""
    pruning = float(entry["soteria_pruning"])
    return StepHooks(shared=lambda tree, victim, variables, x: apply_soteria(
        tree, *soteria_mask(victim, variables, x, pruning)))


# ----- attacker sides: what an attacker who knows the defense does (see Adaptation) -----

DROPOUT_SAMPLES = 4   # masks averaged per step by the dropout-aware attacker at batch size > 1


def _on(k: Mapping) -> jax.Array:
    return k["on"] > 0


def observed_zeros_masked(tree: PyTree, target: PyTree, on) -> PyTree:
    """`tree` with the entries that are exactly 0 in the observed update `target` set to 0 (where
    `on`): matching then sees only the coordinates the defense let through (breaching's masked cosine)."""
    return jax.tree.map(lambda g, t: jnp.where(on & (t == 0), jnp.zeros_like(g), g), tree, target)


def _clip_candidate(tree, target, k, context):
    scale = jnp.minimum(1.0, k["clip_norm"] / jnp.maximum(optax.tree.norm(tree), 1e-30))
    scale = jnp.where(_on(k), scale, 1.0)
    return jax.tree.map(lambda g: g * scale, tree)


def _noise_noise(k, context):
    """Each client adds its own noise: the aggregate's variance is `clients` times one client's;
    a sum of Laplace noises is not Laplace, so with clients > 1 it is modelled as Gaussian."""
    laplace = (k["laplace"] > 0) & (context.clients == 1)
    variance = jnp.where(_on(k) & ~laplace, k["std"] ** 2 * context.clients, 0.0)
    return variance, jnp.where(_on(k) & laplace, k["std"] / math.sqrt(2.0), 0.0)


def _dp_steps(k, target, context, samples):
    """The simulated step clips each example's gradient to C before the mean (the mean of
    per-example gradients, unclipped, where `on` is 0)."""

    def gradient(loss: Loss) -> StepGradient:
        def clipped(params, x, labels, key):
            per = jax.vmap(lambda xi, yi: jax.grad(loss)(params, xi[None], yi[None], key))(x, labels)
            norms = jax.vmap(optax.global_norm)(per)
            scale = jnp.where(_on(k), jnp.minimum(1.0, k["clip_norm"] / jnp.maximum(norms, 1e-30)), 1.0)
            return jax.tree.map(lambda g: jnp.mean(g * scale.reshape(-1, *(1,) * (g.ndim - 1)), axis=0), per)

        return clipped

    return [StepHooks(gradient=gradient)] * samples


def _dp_noise(k, context):
    """N(0, (z C)^2) on the sum of a step's B clipped gradients, divided by B; FedAvg sums its local
    steps' updates (scale local_lr * sqrt(local_steps)), secure aggregation its clients'."""
    std = k["noise_multiplier"] * k["clip_norm"] / context.step_batch_size * context.noise_scale
    return jnp.where(_on(k), std**2 * context.clients, 0.0), 0.0


def _dropout_samples(context: AttackerContext) -> int:
    return 1 if context.step_batch_size == 1 else DROPOUT_SAMPLES


def _dropout_steps(k, target, context, samples):
    """Masks consistent with the observed update: a feature whose row of the last dense kernel is 0
    in it was dropped (or 0) for every example, so it is dropped; the others are kept with
    P(kept | not dropped by all B examples) = (1 - p) / (1 - p^B), independently per example (an
    approximation that ignores the 'at least one kept' coupling). At batch size 1 that reads the
    client's mask off the update exactly; above it, `samples` masks from fixed keys are averaged."""
    seen = jnp.any(kernel_at(target, context.classifier) != 0, axis=1)    # (F,)
    batch, rate = context.step_batch_size, k["rate"]
    keep_prob = jnp.where(_on(k), (1.0 - rate) / (1.0 - rate**batch), 1.0)
    hooks = []
    for sample in range(samples):
        u = jax.random.uniform(jax.random.key(sample), (batch, seen.shape[0]))
        keep = seen[None] & (u < keep_prob)
        scale = jnp.where(_on(k), keep / (1.0 - rate), 1.0)
        hooks.append(StepHooks(forward=_rewrite_classifier_input(context.classifier,
                                                                 lambda features, key, s=scale: features * s)))
    return hooks


def _soteria_candidate(tree, target, k, context):
    zero_rows = jnp.all(kernel_at(target, context.classifier) == 0, axis=1, keepdims=True)   # (F, 1)
    return map_kernel(tree, context.classifier, lambda kernel: jnp.where(_on(k) & zero_rows, 0.0, kernel))


def ladder(field: str, steps: Sequence[float], *, fixed: Callable[[Mapping], dict] = lambda entry: {}
           ) -> Callable[[Mapping], list[dict]]:
    """A `Defense.stronger`: the values of `steps` (weakest first: increasing, or decreasing for a
    bound such as a clipping norm) past entry[field] (all of them while the defense is off, field 0),
    each with `fixed(entry)` (fields that stay as the entry has them, or that turn the defense on)."""
    decreasing = steps[0] > steps[-1]

    def stronger(entry: Mapping) -> list[dict]:
        now = entry[field]
        past = [v for v in steps if not now or (v < now if decreasing else v > now)]
        return [{**fixed(entry), field: v} for v in past]
    return stronger


CLIP_ATTACKER = Adaptation(
    "the clipping norm C: its simulated update is clipped to global norm C (a rescaling, so it changes "
    "only a scale-aware matching, e.g. beside noise)", lambda e: {"clip_norm": float(e["clip_norm"])},
    candidate=_clip_candidate)
PRUNE_ATTACKER = Adaptation(
    "that the update was magnitude-pruned: it matches only the coordinates that are non-zero in the observed "
    "update (masked matching)", lambda e: {}, candidate=lambda tree, target, k, context: observed_zeros_masked(
        tree, target, _on(k)))
NOISE_ATTACKER = Adaptation(
    "the noise's distribution and std: matching is the noise's negative log-likelihood per entry "
    "(Gaussian: squared error / 2 std^2, Laplace: absolute error / b)",
    lambda e: {"std": float(e["noise_std"]), "laplace": float(e["noise"] == "laplace")}, noise=_noise_noise)
DP_SGD_ATTACKER = Adaptation(
    "C and z: its simulated step clips each example's gradient to C, and matching is the Gaussian "
    "negative log-likelihood of the noise z C / B", lambda e: {"clip_norm": float(e["dp_clip_norm"]),
                                                               "noise_multiplier": float(e["dp_noise_multiplier"])},
    steps=_dp_steps, noise=_dp_noise)
DROPOUT_ATTACKER = Adaptation(
    "the rate p and the layer: its simulated forward drops the classifier input with masks consistent with "
    "the observed update's zero rows of the last dense kernel (the client's mask itself at batch size 1)",
    lambda e: {"rate": float(e["dropout_rate"])}, steps=_dropout_steps, samples=_dropout_samples)
SOTERIA_ATTACKER = Adaptation(
    "which layer Soteria defends: the rows of the last dense kernel that are 0 in the observed update are "
    "dropped from matching", lambda e: {}, candidate=_soteria_candidate)


register(Defense("clip", "update", {"clip_norm": 0.0}, "clip_norm",
                 lambda entry: check_number(entry, "clip_norm"),
                 lambda entry, key: optax.clip_by_global_norm(float(entry["clip_norm"])), CLIP_ATTACKER,
                 ladder("clip_norm", (1.0, 0.1, 0.01, 1e-3))))
register(Defense("prune", "update", {"prune_sparsity": 0.0, "prune_scope": "per_tensor"}, "prune_sparsity",
                 _check_prune, lambda entry, key: prune(float(entry["prune_sparsity"]), entry["prune_scope"]),
                 PRUNE_ATTACKER, ladder("prune_sparsity", (0.9, 0.99, 0.999, 0.9999),
                                        fixed=lambda entry: {"prune_scope": entry["prune_scope"]})))
register(Defense("noise", "update", {"noise": "gaussian", "noise_std": 0.0}, "noise_std", _check_noise, _build_noise,
                 NOISE_ATTACKER, ladder("noise_std", (1e-2, 3e-2, 0.1, 0.3, 1.0),
                                        fixed=lambda entry: {"noise": entry["noise"]})))
register(Defense("dp_sgd", "step", {"dp_clip_norm": 0.0, "dp_noise_multiplier": 0.0}, "dp_clip_norm",
                 _check_dp_sgd, _build_dp_sgd, DP_SGD_ATTACKER,
                 ladder("dp_noise_multiplier", (0.5, 1.0, 2.0, 4.0, 8.0),
                        fixed=lambda entry: {"dp_clip_norm": entry["dp_clip_norm"] or 1.0})))
register(Defense("dropout", "step", {"dropout_rate": 0.0}, "dropout_rate",
                 lambda entry: check_number(entry, "dropout_rate", 0.0, 1.0, high_open=True), _build_dropout,
                 DROPOUT_ATTACKER, ladder("dropout_rate", (0.5, 0.75, 0.9, 0.99))))
register(Defense("soteria", "step", {"soteria_pruning": 0.0}, "soteria_pruning",
                 lambda entry: check_number(entry, "soteria_pruning", 0.0, 1.0, high_open=True), _build_soteria,
                 SOTERIA_ATTACKER, ladder("soteria_pruning", (0.4, 0.8, 0.95, 0.99))))
