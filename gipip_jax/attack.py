"""Optimization-based gradient inversion (GI-PIP, Inverting Gradients): optimizer and loop.

The attack optimizes candidate images x (B, H, W, C) in the victim's normalized space:
Adam on pixels (optionally on the sign of the gradient, as Inverting Gradients does; GI-PIP's
released code does not), learning rate x0.1 at 3/8, 5/8 and 7/8 of the iterations, and a
projection onto the valid box [normalize(0), normalize(1)] after every step.

What is optimized is a *parameterization* (`parameterizations.py`): the pixels by default, or
e.g. a GAN's latent and weights, or an untrained U-Net's weights; the objective always sees the
rendered images.

Shape of the code: `make_attack` returns pure `init`/`step` functions over an `AttackState` of
arrays only; `make_inverter` builds the loop that runs them in jitted `lax.scan` chunks (one
compile serves every target and restart), reports progress between chunks, and keeps the best
of several restarts by final matching term (or objective).
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gipip_jax.parameterizations import Parameterization, pixels

PyTree = Any
Objective = Callable[[jax.Array, PyTree, jax.Array], tuple[jax.Array, dict]]

# Inverting Gradients' MultiStepLR milestones: iterations // 2.667, // 1.6, // 1.142 (~3/8, 5/8, 7/8).
MILESTONE_DIVISORS = (2.667, 1.6, 1.142)


class AttackDivergedError(FloatingPointError):
    """The objective became NaN or Inf."""


class AttackState(NamedTuple):
    """State of one attack. x: what is optimized, the parameterization's params (for pixels, the
    (B, H, W, C) normalized images); step: int32 (); loss: float32 ()."""

    x: jax.Array
    opt_state: optax.OptState
    step: jax.Array
    loss: jax.Array


class Attack(NamedTuple):
    """Pure functions of one attack.

    init(key, shape) -> AttackState, the parameterization's init (pixels: x ~ N(0, 1), the
      reference initialization).
    step(state, target_grads, labels, weights=None) -> AttackState, one optimizer step + the
      parameterization's projection (pixels: the box); `weights` (e.g. traced per-attack
      ObjectiveWeights) is passed to the objective.
    render(params) -> (B, H, W, C) normalized images of a state's x (default: x itself).
    """

    init: Callable[[jax.Array, tuple[int, ...]], AttackState]
    step: Callable[..., AttackState]
    render: Callable[[PyTree], jax.Array] = lambda x: x


class Inversion(NamedTuple):
    """Result of `invert`: the best restart.

    images01: (B, H, W, C) float32 in [0, 1]; loss: its final objective value;
    terms: its final objective terms; restart_losses: final objective of every restart.
    """

    images01: np.ndarray
    loss: float
    terms: dict
    restart: int
    restart_losses: list


def step_decay_schedule(learning_rate: float, iterations: int, factor: float = 0.1) -> optax.Schedule:
    """learning_rate, times `factor` from each milestone on (the reference step schedule)."""
    milestones = [int(iterations // d) for d in MILESTONE_DIVISORS]
    # optax, like PyTorch's MultiStepLR, scales from the milestone's count on (tested).
    return optax.piecewise_constant_schedule(learning_rate, {m: factor for m in milestones})


def make_optimizer(learning_rate: float, iterations: int, *, signed: bool) -> optax.GradientTransformation:
    """Adam with the step schedule; `signed` feeds Adam the sign of the gradient."""
    adam = optax.adam(step_decay_schedule(learning_rate, iterations))
    return optax.chain(optax.scale_by_sign(), adam) if signed else adam


def make_attack(objective: Objective, optimizer: optax.GradientTransformation, bounds: tuple | None = None, *,
                parameterization: Parameterization | None = None) -> Attack:
    """An attack minimizing `objective(render(params), ...)` with `optimizer` over the params of
    `parameterization` (default: the pixels, kept in the box bounds = (lo, hi), each (C,))."""
    if parameterization is None:
        if bounds is None:
            raise ValueError("make_attack needs the box bounds for pixels, or a parameterization")
        parameterization = pixels(bounds)
    init_params, render, project = parameterization.init, parameterization.render, parameterization.project

    def init(key, shape):
        x = init_params(key, shape)
        return AttackState(x, optimizer.init(x), jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, jnp.float32))

    def step(state, target_grads, labels, weights=None):
        objective_args = (target_grads, labels) if weights is None else (target_grads, labels, weights)
        (loss, _), grad = jax.value_and_grad(lambda p: objective(render(p), *objective_args), has_aux=True)(state.x)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.x)
        x = project(optax.apply_updates(state.x, updates))
        return AttackState(x, opt_state, state.step + 1, loss)

    return Attack(init, step, render)


def make_chunk_runner(attack: Attack, chunk_size: int) -> Callable:
    """jit(run_chunk)(state, target_grads, labels, total) -> (state, losses (chunk_size,)).

    Runs `chunk_size` steps in one `lax.scan`; steps past `total` (a traced int, so one compile
    serves any iteration count) leave the state unchanged and report NaN loss.
    """

    def run_chunk(state, target_grads, labels, total):
        def body(s, _):
            new = attack.step(s, target_grads, labels)
            active = s.step < total
            s = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, s)
            return s, jnp.where(active, new.loss, jnp.nan)

        return jax.lax.scan(body, state, length=chunk_size)

    return jax.jit(run_chunk)


def make_inverter(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    bounds: tuple,
    denormalize: Callable[[jax.Array], jax.Array],
    *,
    iterations: int,
    restarts: int = 1,
    chunk_size: int = 100,
    log: Callable[[str], None] = print,
    log_every: int | None = None,
    parameterization: Parameterization | None = None,
    select: str = "matching",
) -> Callable[[PyTree, jax.Array, jax.Array, tuple], Inversion]:
    """Returns invert(target_grads, labels, key, shape) -> Inversion, compiled once for all targets.

    invert runs `restarts` independent attacks one after another from keys split off `key`
    and keeps the one with the lowest final matching term (`select="matching"`, as the GI-PIP
    authors rank restarts) or objective (`select="objective"`). shape: (B, H, W, C) of the candidates; labels:
    int (B,) or soft (B, K). It raises AttackDivergedError when every restart ends with a
    non-finite objective. `parameterization` replaces the pixels (and `bounds`) as what is optimized.
    """
    if iterations < 1 or restarts < 1 or chunk_size < 1:
        raise ValueError(f"iterations, restarts and chunk_size must be >= 1, got {iterations}, {restarts}, {chunk_size}")
    if select not in ("matching", "objective"):
        raise ValueError(f"unknown restart selection {select!r}; choose matching or objective")
    attack = make_attack(objective, optimizer, bounds, parameterization=parameterization)
    chunk = make_chunk_runner(attack, min(chunk_size, iterations))
    final_objective = jax.jit(objective)
    log_every = log_every or max(iterations // 10, 1)

    def run_one(restart, key, target_grads, labels, shape):
        state = attack.init(key, shape)
        start, next_log = time.perf_counter(), log_every
        while int(state.step) < iterations:
            state, chunk_losses = chunk(state, target_grads, labels, iterations)
            done = int(state.step)
            if not np.isfinite(float(state.loss)):
                log(f"  restart {restart + 1}/{restarts}: objective became non-finite by step {done}")
                break
            if done >= next_log:
                rate = done / (time.perf_counter() - start)
                log(f"  restart {restart + 1}/{restarts}  step {done}/{iterations}  "
                    f"loss {float(np.nanmin(chunk_losses)):.5f}  {rate:.1f} steps/s")
                next_log = (done // log_every + 1) * log_every
        x = attack.render(state.x)
        loss, terms = final_objective(x, target_grads, labels)
        return float(loss), x, terms

    def invert(target_grads, labels, key, shape):
        best, losses = None, []
        for restart, restart_key in enumerate(jax.random.split(key, restarts)):
            loss, x, terms = run_one(restart, restart_key, target_grads, labels, shape)
            losses.append(loss)
            score = float(terms["matching"]) if select == "matching" else loss
            if np.isfinite(loss) and (best is None or score < best[0]):
                best = (score, restart, loss, x, terms)
        if best is None:
            raise AttackDivergedError(f"the objective became NaN/Inf in all {restarts} restart(s)")
        _, restart, loss, x, terms = best
        images01 = np.asarray(jnp.clip(denormalize(x), 0.0, 1.0))
        return Inversion(images01, loss, {k: float(v) for k, v in terms.items()}, restart, losses)

    return invert
