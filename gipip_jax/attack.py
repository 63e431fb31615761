"""One optimization-based gradient-inversion attack as pure functions: optimizer and step.

The attack optimizes candidate images x (B, H, W, C) in the victim's normalized space, by default
(GI-PIP, Inverting Gradients) Adam on pixels (optionally on the sign of the gradient, as Inverting
Gradients does; GI-PIP's released code does not), learning rate x0.1 at 3/8, 5/8 and 7/8 of the
iterations, and a projection onto the valid box [normalize(0), normalize(1)] after every step.
DLG / iDLG are the same attack with optax's L-BFGS (`make_lbfgs`, a line search that evaluates
the objective itself) over the "dlg" parameterization (no box, labels optionally learned).

What is optimized is a *parameterization* (`parameterizations.py`): the pixels by default, or
e.g. a GAN's latent and weights, or an untrained U-Net's weights; the objective always sees the
rendered images.

Shape of the code: `make_attack` returns pure `init`/`step` functions over an `AttackState` of
arrays only; the batched engine (`engine.py`) runs them, one attack or thousands, in jitted
`lax.scan` chunks. There is no other loop.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gipip_jax.parameterizations import Parameterization, pixels

PyTree = Any
Objective = Callable[..., tuple[jax.Array, dict]]

# Inverting Gradients' MultiStepLR milestones: iterations // 2.667, // 1.6, // 1.142 (~3/8, 5/8, 7/8).
MILESTONE_DIVISORS = (2.667, 1.6, 1.142)
OPTIMIZERS = ("adam", "lbfgs")


class AttackState(NamedTuple):
    """State of one attack. x: what is optimized, the parameterization's params (for pixels, the
    (B, H, W, C) normalized images); step: int32 (); loss: float32 (), the objective at the params
    before the last update; best: (params, loss) of the lowest objective seen, kept by attacks with
    a line search (None otherwise)."""

    x: PyTree
    opt_state: optax.OptState
    step: jax.Array
    loss: jax.Array
    best: Any = None


class Attack(NamedTuple):
    """Pure functions of one attack.

    init(key, shape, update=None) -> AttackState, the parameterization's init (pixels: x ~ N(0, 1),
      the reference initialization), or its from_update(key, shape, update) when it has one
      (update: the attack's target update tree).
    step(state, target_grads, labels, terms=None) -> AttackState, one optimizer step + the
      parameterization's projection (pixels: the box); `terms` (e.g. traced per-attack term
      settings, see objectives.make_objective) is passed to the objective.
    result(state) -> the params the attack ends with: its last iterate, or its best one when it
      keeps the best (`keeps_best`).
    render(params) -> (B, H, W, C) normalized images of params.
    labels(params, given) -> the labels the objective sees (learned ones for DLG).
    """

    init: Callable[..., AttackState]
    step: Callable[..., AttackState]
    result: Callable[[AttackState], PyTree]
    render: Callable[[PyTree], jax.Array]
    labels: Callable[[PyTree, jax.Array], jax.Array]
    keeps_best: bool


def step_decay_schedule(learning_rate: float, iterations: int, factor: float = 0.1) -> optax.Schedule:
    """learning_rate, times `factor` from each milestone on (the reference step schedule)."""
    milestones = [int(iterations // d) for d in MILESTONE_DIVISORS]
    # optax, like PyTorch's MultiStepLR, scales from the milestone's count on (tested).
    return optax.piecewise_constant_schedule(learning_rate, {m: factor for m in milestones})


def make_optimizer(learning_rate: float, iterations: int, *, signed: bool) -> optax.GradientTransformation:
    """Adam with the step schedule; `signed` feeds Adam the sign of the gradient."""
    adam = optax.adam(step_decay_schedule(learning_rate, iterations))
    return optax.chain(optax.scale_by_sign(), adam) if signed else adam


def make_lbfgs(memory_size: int = 100, max_linesearch_steps: int = 20) -> optax.GradientTransformationExtraArgs:
    """optax L-BFGS with its zoom line search (DLG's optimizer; the reference uses PyTorch's L-BFGS,
    lr 1, no line search, up to 20 inner iterations per step). memory_size 100 is PyTorch's default."""
    linesearch = optax.scale_by_zoom_linesearch(max_linesearch_steps=max_linesearch_steps,
                                                initial_guess_strategy="one")
    return optax.lbfgs(memory_size=memory_size, linesearch=linesearch)


def make_attack(objective: Objective, optimizer: optax.GradientTransformation, bounds: tuple | None = None, *,
                parameterization: Parameterization | None = None, line_search: bool = False) -> Attack:
    """An attack minimizing `objective(render(params), target_grads, labels(params, given), terms)`
    with `optimizer` over the params of `parameterization` (default: the pixels, kept in the box
    bounds = (lo, hi), each (C,)).

    line_search: the optimizer follows optax's value_fn protocol (`make_lbfgs`): it is given the
    objective to evaluate and its state caches the value and gradient. Such an attack keeps the
    best params seen, since near an exact match float32 L-BFGS can jump away from the minimum. Use
    it with a parameterization that does not project (e.g. "dlg"): a projection would make the
    cached value that of a point the attack is no longer at.
    """
    if parameterization is None:
        if bounds is None:
            raise ValueError("make_attack needs the box bounds for pixels, or a parameterization")
        parameterization = pixels(bounds)
    p = parameterization

    def init(key, shape, update=None):
        if p.from_update is not None and update is None:
            raise ValueError(f"the {p.name} parameterization starts from the target update: pass it to init")
        x = p.init(key, shape) if p.from_update is None else p.from_update(key, shape, update)
        # optax's line-search state starts with weakly typed scalars; strong types keep the carry of
        # lax.scan fixed, so the step is traced once.
        opt_state = jax.tree.map(lambda a: jnp.asarray(a, a.dtype), optimizer.init(x))
        inf = jnp.full((), jnp.inf, jnp.float32)
        return AttackState(x, opt_state, jnp.zeros((), jnp.int32), inf, (x, inf) if line_search else None)

    def step(state, target_grads, labels, terms=None):
        extra = () if terms is None else (terms,)

        def value_fn(params):
            return objective(p.render(params), target_grads, p.labels(params, labels), *extra)[0]

        if line_search:
            loss, grad = optax.value_and_grad_from_state(value_fn)(state.x, state=state.opt_state)
            updates, opt_state = optimizer.update(grad, state.opt_state, state.x, value=loss, grad=grad,
                                                  value_fn=value_fn)
            better = loss < state.best[1]   # False for NaN
            best = (jax.tree.map(lambda new, old: jnp.where(better, new, old), state.x, state.best[0]),
                    jnp.where(better, loss, state.best[1]))
        else:
            loss, grad = jax.value_and_grad(value_fn)(state.x)
            updates, opt_state = optimizer.update(grad, state.opt_state, state.x)
            best = None
        x = p.project(optax.apply_updates(state.x, updates))
        return AttackState(x, opt_state, state.step + 1, loss, best)

    def result(state):
        return state.best[0] if line_search else state.x

    return Attack(init, step, result, p.render, p.labels, line_search)
