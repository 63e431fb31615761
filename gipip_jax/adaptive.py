"""Defense-aware matching: the attacker who knows the client's defense.

A study-grid switch, `adaptive` (False: the attacker ignores the defense, as every GIA suite does;
True: it knows it), makes one study hold both arms. What an adaptive attacker knows and does is the
`defenses.Adaptation` each registered defense carries (`Defense.attacker`), so a new defense brings
its adaptive attack with it. For the defenses on in a setting, the adaptive attacker

1. simulates the client's step with the defense's attacker-side step hooks (DP-SGD's per-example
   clip; dropout masks consistent with the observed update, averaged when sampled);
2. transforms the simulated update as the defense did, with what the observed update reveals
   (the clip; the zeros of pruning and Soteria: only surviving coordinates are matched);
3. matches with the negative log-likelihood of the defense's noise when it adds noise (mean over
   entries of squared error / 2 var for Gaussian noise and DP-SGD, of absolute error / b for
   Laplace noise: Balunović et al., ICLR 2022), else with the study's matching (cosine or L2).

The knowledge is a per-attack traced value of the one compiled program: the "matching" entry of
the objective's term settings, {defense name: {"on": 0 | 1, **its numbers}} (`knowledge`), for
the defenses with an attacker side that some adaptive attack of the study meets (`in_use`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gipip_jax import defenses

PyTree = Any
# The attacker's grid field and its default: False ignores the defense.
ATTACKER_DEFAULTS = {"adaptive": False}


def _defense_entries(setting: Mapping) -> dict[str, dict]:
    """{defense name: its entry} of every registered defense, from a flat setting's defense fields."""
    fields = {f: setting[f] for f in defenses.DEFENSE_DEFAULTS if f in setting}
    full = defenses.parse(fields).fields
    return {name: {"name": name, **{f: full[f] for f in d.fields}} for name, d in defenses.REGISTRY.items()}


def adapted(setting: Mapping) -> list[str]:
    """The defenses an attack of flat `setting` adapts to: those on, with an attacker side, when
    setting["adaptive"] is True (else none)."""
    adaptive = setting.get("adaptive", False)
    if not isinstance(adaptive, bool):
        raise ValueError(f"grid field adaptive must be True or False, got {adaptive!r}")
    if not adaptive:
        return []
    return [name for name, entry in _defense_entries(setting).items()
            if defenses.REGISTRY[name].attacker is not None and defenses.REGISTRY[name].is_on(entry)]


def in_use(settings: Iterable[Mapping]) -> list[str]:
    """The defenses some setting adapts to, in registry order: the attacker sides a study's one
    objective is built with."""
    used = {name for s in settings for name in adapted(s)}
    return [name for name in defenses.REGISTRY if name in used]


def knowledge(setting: Mapping, names: Sequence[str]) -> dict:
    """The "matching" settings of an attack: {name: {"on": 1.0 if it adapts to it else 0.0, **numbers}}
    for the study's `names` (floats, stacked per attack by the engine)."""
    entries, on = _defense_entries(setting), set(adapted(setting))
    return {name: {"on": float(name in on), **defenses.REGISTRY[name].attacker.knowledge(entries[name])}
            for name in names}


def knows(setting: Mapping) -> list[str]:
    """What the attacker of `setting` is assumed to know, one sentence per defense it adapts to."""
    return [f"{name}: {defenses.REGISTRY[name].attacker.knows}" for name in adapted(setting)]


class AttackerModel(NamedTuple):
    """The adaptive side of an objective (see the module docstring).

    update(update_fn, params, x, labels, target, k) -> the simulated update to match, from
      update_fn(params, x, labels, steps) (threat_models.attacker_update_fn), candidates x
      (B, H, W, C) normalized, the observed update `target` and the knowledge k ("matching" settings).
    distance(candidate, target, k, base) -> scalar: the noise's NLL where the knowledge says the
      update carries noise, else base(candidate, target).
    """

    update: Callable[..., PyTree]
    distance: Callable[..., jax.Array]


def context(victim, variables: dict, batch_size: int, threat: Mapping) -> defenses.AttackerContext:
    """The study's fixed facts an attacker side uses (`threat`: threat_models.check_threat_config's)."""
    clients = int(threat.get("clients", 1))
    step_batch = int(threat.get("local_batch_size") or 0) or batch_size // clients
    scale = 1.0 if threat.get("kind", "fedsgd") == "fedsgd" else \
        float(threat["local_lr"]) * math.sqrt(int(threat["local_steps"]))
    try:
        classifier = defenses.classifier_path(victim, variables)
    except ValueError:   # no dense layer: only the attacker sides that read it (dropout, Soteria) fail, when built
        classifier = None
    return defenses.AttackerContext(victim, variables, classifier, batch_size, step_batch, scale, clients)


def attacker_model(names: Sequence[str], ctx: defenses.AttackerContext) -> AttackerModel:
    """The AttackerModel of the attacker sides of defenses `names` (see `in_use`)."""
    sides = {name: defenses.REGISTRY[name].attacker for name in names}
    # the client's order: step defenses act inside its step and on its result, then the update chain
    ordered = [n for n in names if defenses.REGISTRY[n].kind == "step"] + \
              [n for n in names if defenses.REGISTRY[n].kind == "update"]
    samples = max([sides[n].samples(ctx) for n in names if sides[n].steps is not None] or [1])

    def update(update_fn, params, x, labels, target, k):
        hooks = [[] for _ in range(samples)]
        for name in ordered:
            if sides[name].steps is not None:
                for sample, hook in enumerate(sides[name].steps(k[name], target, ctx, samples)):
                    hooks[sample].append(hook)
        trees = [update_fn(params, x, labels, tuple(h)) for h in hooks]
        tree = jax.tree.map(lambda *leaves: sum(leaves[1:], leaves[0]) / len(leaves), *trees)
        for name in ordered:
            if sides[name].candidate is not None:
                tree = sides[name].candidate(tree, target, k[name], ctx)
        return tree

    noisy = [n for n in names if sides[n].noise is not None]

    def distance(candidate, target, k, base):
        plain = base(candidate, target)
        if not noisy:
            return plain
        variance = laplace = 0.0
        for name in noisy:
            v, b = sides[name].noise(k[name], ctx)
            variance, laplace = variance + v, laplace + b
        pairs = list(zip(jax.tree.leaves(candidate), jax.tree.leaves(target)))
        size = sum(c.size for c, _ in pairs)
        squared = sum(jnp.sum((c - t) ** 2) for c, t in pairs) / size
        absolute = sum(jnp.sum(jnp.abs(c - t)) for c, t in pairs) / size
        # Laplace alone: L1 / b; any Gaussian part: L2 / 2 var (a Laplace part counted by its variance 2 b^2)
        total_variance = variance + 2.0 * laplace**2
        gaussian = squared / (2.0 * jnp.where(total_variance > 0, total_variance, 1.0))
        l1 = absolute / jnp.where(laplace > 0, laplace, 1.0)
        return jnp.where((laplace > 0) & (variance == 0), l1, jnp.where(total_variance > 0, gaussian, plain))

    return AttackerModel(update, distance)
