"""Federated threat models: what a client shares, and what the attacker simulates to match it.

Kinds (`KINDS`):
- "fedsgd": the client shares the gradient of its batch's mean CE loss (one step).
- "fedavg": the client runs `local_steps` SGD steps (learning rate `local_lr`) on its batch, cycling
  through consecutive mini-batches of `local_batch_size` examples (0: the whole batch each step;
  step i uses mini-batch i mod (B / local_batch_size), as Inverting Gradients' FedAvg attack), and
  shares the weight difference params_K - params_0.
- secure aggregation: `clients` clients each share an update and the attacker sees only their
  sum (`secure_aggregate`); `aggregated_update` splits one batch into `clients` equal consecutive
  parts, one per client.

The victim runs in eval mode (BatchNorm uses running statistics) throughout, as in client.py.
Defenses (defenses.py) come as one `defenses.DefenseSetting` (`defenses.parse` of the flat config
fields): its step defenses' hooks change the client's forward (dropout), its step gradient (DP-SGD)
and its result (Soteria); its update defenses then transform the tree the client shares.

`attacker_update_fn` is the attacker's simulation of the same client computation (same kind, local
steps, learning rate, mini-batches and number of clients), without the client's random defenses,
whose noise and masks it cannot know; it is differentiable w.r.t. the candidate images. An attacker
who knows the defense passes its step hooks (adaptive.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from gipip_jax import defenses
from gipip_jax.client import SharedUpdate, cross_entropy
from gipip_jax.victims import Victim

PyTree = Any
KINDS = ("fedsgd", "fedavg")
# Flat, sweepable threat-model fields of a config and their defaults (IG's FedAvg lr is 1e-4).
THREAT_DEFAULTS: dict[str, Any] = {"kind": "fedsgd", "local_steps": 1, "local_lr": 1e-4,
                                   "local_batch_size": 0, "clients": 1}


def _check_clients(clients: int) -> None:
    if isinstance(clients, bool) or int(clients) != clients or clients < 1:
        raise ValueError(f"clients must be an integer >= 1, got {clients!r}")


def _check_threat(kind: str, local_steps: int, local_lr: float, local_batch_size: int, batch: int | None) -> None:
    """Raises ValueError for bad settings; `batch` (the client's, None: unknown yet) must split evenly."""
    if kind not in KINDS:
        raise ValueError(f"unknown threat model kind {kind!r}; choose one of {KINDS}")
    if isinstance(local_steps, bool) or int(local_steps) != local_steps or local_steps < 1:
        raise ValueError(f"local_steps must be an integer >= 1, got {local_steps!r}")
    if int(local_batch_size) != local_batch_size or local_batch_size < 0:
        raise ValueError(f"local_batch_size must be an integer >= 0 (0: the whole batch), got {local_batch_size!r}")
    if kind == "fedsgd" and (local_steps != 1 or local_batch_size != 0):
        raise ValueError("fedsgd shares one gradient of the whole batch: local_steps must be 1 and "
                         f"local_batch_size 0, got {local_steps} and {local_batch_size}; use kind='fedavg'")
    if kind == "fedavg" and not local_lr > 0:
        raise ValueError(f"fedavg needs local_lr > 0, got {local_lr!r}")
    if local_batch_size and batch is not None and batch % local_batch_size:
        raise ValueError(f"local_batch_size {local_batch_size} does not divide the client's batch of {batch}")


def check_threat_config(config: Mapping) -> dict:
    """`config` (any subset of `THREAT_DEFAULTS`' fields) completed with the defaults and checked."""
    unknown = set(config) - set(THREAT_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown threat-model fields {sorted(unknown)}; known: {sorted(THREAT_DEFAULTS)}")
    full = {**THREAT_DEFAULTS, **config}
    _check_threat(full["kind"], full["local_steps"], full["local_lr"], full["local_batch_size"], None)
    _check_clients(full["clients"])
    return full


def make_step_gradient(victim: Victim, variables: dict,
                       steps: Sequence[defenses.StepHooks] = ()) -> defenses.StepGradient:
    """gradient(params, x, labels, key) -> params-shaped tree: the gradient one client step uses.

    Plain: the gradient of the batch's mean CE loss (`key` unused). `steps` (a DefenseSetting's
    step_hooks()) wrap the forward in order and may replace jax.grad (DP-SGD).
    x: (B, H, W, C) normalized; labels int (B,) or soft (B, K).
    """
    rest = {k: v for k, v in variables.items() if k != "params"}

    def logits(params, x, key):
        del key
        return victim.apply({"params": params, **rest}, x)

    for hook in steps:
        if hook.forward is not None:
            logits = hook.forward(victim, variables, logits)

    def loss(params, x, labels, key):
        return cross_entropy(logits(params, x, key), labels)

    gradient = next((hook.gradient for hook in steps if hook.gradient is not None), jax.grad)
    return gradient(loss)


def local_training_update(step_gradient: defenses.StepGradient, params: PyTree, x: jax.Array, labels: jax.Array,
                          key: jax.Array, *, local_steps: int, local_lr: float, local_batch_size: int = 0) -> PyTree:
    """params_K - params_0 after K = local_steps SGD steps p <- p - local_lr * step_gradient(p, batch_i,
    labels_i, fold_in(key, i)), batch_i the (i mod B/local_batch_size)-th consecutive mini-batch."""
    size = local_batch_size or x.shape[0]
    count = x.shape[0] // size
    xs = x.reshape(count, size, *x.shape[1:])
    ys = labels.reshape(count, size, *labels.shape[1:])

    def step(p, i):
        b = i % count
        g = step_gradient(p, xs[b], ys[b], jax.random.fold_in(key, i))
        return jax.tree.map(lambda w, d: w - local_lr * d, p, g), None

    final, _ = jax.lax.scan(step, params, jnp.arange(local_steps))
    return jax.tree.map(jnp.subtract, final, params)


def client_update(victim: Victim, variables: dict, x: jax.Array, labels: jax.Array, *, key: jax.Array,
                  kind: str = "fedsgd", local_steps: int = 1, local_lr: float = THREAT_DEFAULTS["local_lr"],
                  local_batch_size: int = 0, defense: defenses.DefenseSetting | None = None) -> SharedUpdate:
    """What one client shares for its batch x (B, H, W, C) normalized, labels int (B,).

    `defense` (`defenses.parse(flat fields)`; None: no defense): its step hooks act in every local
    step (keys from split(key)[0]) and on the result, then its update chain (key split(key)[1])
    transforms the (FedSGD gradient or FedAvg weight-difference) tree.
    """
    _check_threat(kind, local_steps, local_lr, local_batch_size, x.shape[0])
    if defense is None:
        defense = defenses.parse({})
    if not isinstance(defense, defenses.DefenseSetting):
        raise ValueError(f"defense must be a defenses.DefenseSetting (defenses.parse of flat fields), got {defense!r}")
    hooks = defense.step_hooks()
    step_gradient = make_step_gradient(victim, variables, hooks)
    params = variables["params"]
    step_key, defense_key = jax.random.split(key)
    if kind == "fedsgd":
        tree = step_gradient(params, x, labels, jax.random.fold_in(step_key, 0))
    else:
        tree = local_training_update(step_gradient, params, x, labels, step_key, local_steps=local_steps,
                                     local_lr=local_lr, local_batch_size=local_batch_size)
    for hook in hooks:
        if hook.shared is not None:
            tree = hook.shared(tree, victim, variables, x)
    transform = defense.update_transform(defense_key)
    tree, _ = transform.update(tree, transform.init(params), params)
    return SharedUpdate(grads=tree, batch_size=int(x.shape[0]))


def secure_aggregate(updates: Sequence[SharedUpdate]) -> SharedUpdate:
    """The sum of several clients' updates (what secure aggregation reveals); its batch_size is the
    total. Updates must have the same tree structure and shapes (checked without reading values, so
    it works under jit)."""
    if not updates:
        raise ValueError("secure aggregation needs at least one client update")
    first = updates[0].grads
    shapes = jax.tree.map(jnp.shape, first)
    for number, update in enumerate(updates[1:], 1):
        if jax.tree.structure(update.grads) != jax.tree.structure(first) or \
                jax.tree.map(jnp.shape, update.grads) != shapes:
            raise ValueError(f"client update {number} does not have the tree structure and shapes of update 0; "
                             "were all clients' updates computed on the same model?")
    total = jax.tree.map(lambda *leaves: sum(leaves[1:], leaves[0]), *[u.grads for u in updates])
    return SharedUpdate(grads=total, batch_size=sum(u.batch_size for u in updates))


def split_clients(x: jax.Array, labels: jax.Array, clients: int) -> list[tuple[jax.Array, jax.Array]]:
    """x (B, ...), labels (B, ...) cut into `clients` equal consecutive parts (B / clients each)."""
    _check_clients(clients)
    if x.shape[0] % clients:
        raise ValueError(f"a batch of {x.shape[0]} cannot be split evenly among {clients} clients")
    size = x.shape[0] // clients
    return [(x[c * size:(c + 1) * size], labels[c * size:(c + 1) * size]) for c in range(clients)]


def aggregated_update(victim: Victim, variables: dict, x: jax.Array, labels: jax.Array, *, clients: int = 1,
                      key: jax.Array, defense: defenses.DefenseSetting | None = None, **threat) -> SharedUpdate:
    """`secure_aggregate` of `clients` clients' `client_update`s (`threat`: its kind, local_steps,
    local_lr, local_batch_size), client c holding the c-th of the equal consecutive parts of x and
    using key fold_in(key, c), so each draws its own noise and masks. clients=1 is client_update itself."""
    parts = split_clients(x, labels, clients)
    return secure_aggregate([
        client_update(victim, variables, xc, yc, key=jax.random.fold_in(key, c), defense=defense, **threat)
        for c, (xc, yc) in enumerate(parts)])


def attacker_update_fn(victim: Victim, variables: dict, *, kind: str = "fedsgd", local_steps: int = 1,
                       local_lr: float = THREAT_DEFAULTS["local_lr"], local_batch_size: int = 0,
                       clients: int = 1) -> Callable[..., PyTree]:
    """update_fn(params, x, labels, steps=()) -> tree: the attacker's simulation of the shared
    (aggregate) update for candidate images x (B, H, W, C) normalized, labels int (B,) or soft (B, K);
    for `objectives.make_objective(..., update_fn=...)`. Differentiable w.r.t. x. `steps`: StepHooks
    of an attacker who knows the client's step defenses (adaptive.py), applied in every client step."""
    _check_threat(kind, local_steps, local_lr, local_batch_size, None)
    _check_clients(clients)
    key = jax.random.key(0)  # unused: the simulation has no randomness

    def one_client(params, x, labels, steps):
        _check_threat(kind, local_steps, local_lr, local_batch_size, x.shape[0])
        step_gradient = make_step_gradient(victim, variables, steps)
        if kind == "fedsgd":
            return step_gradient(params, x, labels, key)
        return local_training_update(step_gradient, params, x, labels, key, local_steps=local_steps,
                                     local_lr=local_lr, local_batch_size=local_batch_size)

    def update_fn(params, x, labels, steps=()):
        trees = [one_client(params, xc, yc, steps) for xc, yc in split_clients(x, labels, clients)]
        return jax.tree.map(lambda *leaves: sum(leaves[1:], leaves[0]), *trees)

    return update_fn
