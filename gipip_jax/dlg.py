"""DLG and iDLG: gradient matching minimized by L-BFGS over the image (and soft label).

DLG (Zhu et al., 2019) optimizes a dummy image x (B, H, W, C), drawn from N(0, 1) in the victim's
input space, and a dummy label logit matrix (B, K), drawn from N(0, 1), jointly, so that the
gradient of CE(victim(x), softmax(label logits)) matches the shared one in squared L2 distance
(`objectives.make_objective(..., matching="l2")`). There is no box constraint. iDLG
(Zhao et al., 2020) reads the label off the gradient first (`labels.idlg`) and optimizes only x.

The optimizer is optax's L-BFGS with its zoom line search (`optax.lbfgs`), where the reference
uses PyTorch's L-BFGS (lr 1, no line search, up to 20 inner iterations per step). One `iteration`
here is one L-BFGS update, line search included. `make_dlg` returns pure `init`/`step` functions
(an `attack.Attack`), so the jitted `lax.scan` chunk runner of `attack` drives it; `make_dlg_inverter`
runs restarts and keeps the lowest objective. Near an exact match float32 L-BFGS can jump away
from the minimum (the curvature pairs become noise), so the state keeps the best params seen.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gipip_jax.attack import Attack, AttackDivergedError, make_chunk_runner

PyTree = Any
Objective = Callable[[jax.Array, PyTree, jax.Array], tuple[jax.Array, dict]]


class DLGState(NamedTuple):
    """params: {'x': (B, H, W, C)} plus {'label_logits': (B, K)} when labels are learned;
    step: int32 (); loss: float32 (), the objective at the params before the last update;
    best_params / best_loss: the lowest objective seen so far and its params."""

    params: dict
    opt_state: optax.OptState
    step: jax.Array
    loss: jax.Array
    best_params: dict
    best_loss: jax.Array


class DLGInversion(NamedTuple):
    """Best restart: images01 (B, H, W, C) in [0, 1]; labels int (B,) (argmax of the learned soft
    labels, or the given ones); loss, terms and every restart's final loss as in attack.Inversion."""

    images01: np.ndarray
    labels: np.ndarray
    loss: float
    terms: dict
    restart: int
    restart_losses: list


def make_lbfgs(memory_size: int = 100, max_linesearch_steps: int = 20) -> optax.GradientTransformationExtraArgs:
    """optax L-BFGS (zoom line search). memory_size 100 is PyTorch's default history."""
    linesearch = optax.scale_by_zoom_linesearch(max_linesearch_steps=max_linesearch_steps,
                                                initial_guess_strategy="one")
    return optax.lbfgs(memory_size=memory_size, linesearch=linesearch)


def _label_input(params: dict, labels: jax.Array) -> jax.Array:
    return jax.nn.softmax(params["label_logits"], axis=-1) if "label_logits" in params else labels


def make_dlg(objective: Objective, optimizer: optax.GradientTransformationExtraArgs, *,
             num_classes: int, learn_labels: bool) -> Attack:
    """DLG (learn_labels=True) or iDLG-style (labels given) as pure init/step functions.

    init(key, shape) -> DLGState, x ~ N(0, 1) of `shape` and label logits ~ N(0, 1) (B, K).
    step(state, target_grads, labels) -> DLGState: one L-BFGS update. `labels` (int (B,)) is used
    only when learn_labels is False; pass any (B,) int array otherwise.
    """

    def init(key, shape):
        key_x, key_y = jax.random.split(key)
        params = {"x": jax.random.normal(key_x, shape, jnp.float32)}
        if learn_labels:
            params["label_logits"] = jax.random.normal(key_y, (shape[0], num_classes), jnp.float32)
        # optax's line-search state starts with weakly typed scalars; strong types keep the carry of
        # lax.scan fixed, so the step is traced once.
        opt_state = jax.tree.map(lambda a: jnp.asarray(a, a.dtype), optimizer.init(params))
        inf = jnp.full((), jnp.inf, jnp.float32)
        return DLGState(params, opt_state, jnp.zeros((), jnp.int32), inf, params, inf)

    def step(state, target_grads, labels):
        def value_fn(params):
            return objective(params["x"], target_grads, _label_input(params, labels))[0]

        value, grad = optax.value_and_grad_from_state(value_fn)(state.params, state=state.opt_state)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.params, value=value, grad=grad,
                                              value_fn=value_fn)
        better = value < state.best_loss  # False for NaN
        best_params = jax.tree.map(lambda new, old: jnp.where(better, new, old), state.params, state.best_params)
        return DLGState(optax.apply_updates(state.params, updates), opt_state, state.step + 1, value,
                        best_params, jnp.where(better, value, state.best_loss))

    return Attack(init, step)


def make_dlg_inverter(
    objective: Objective,
    denormalize: Callable[[jax.Array], jax.Array],
    *,
    num_classes: int,
    learn_labels: bool,
    iterations: int,
    restarts: int = 1,
    chunk_size: int = 50,
    memory_size: int = 100,
    log: Callable[[str], None] = print,
) -> Callable[[PyTree, jax.Array, jax.Array, tuple], DLGInversion]:
    """Returns invert(target_grads, labels, key, shape) -> DLGInversion, compiled once for all targets.

    labels: int (B,) (ignored when learn_labels); shape: (B, H, W, C). Restarts run one after
    another from keys split off `key`, each ending at its best params; the lowest finite objective
    wins. Raises AttackDivergedError when no restart saw a finite objective.
    """
    if iterations < 1 or restarts < 1 or chunk_size < 1:
        raise ValueError(f"iterations, restarts and chunk_size must be >= 1, got {iterations}, {restarts}, {chunk_size}")
    dlg = make_dlg(objective, make_lbfgs(memory_size), num_classes=num_classes, learn_labels=learn_labels)
    chunk = make_chunk_runner(dlg, min(chunk_size, iterations))

    @jax.jit
    def final(params, target_grads, labels):
        soft = _label_input(params, labels)
        loss, terms = objective(params["x"], target_grads, soft)
        hard = jnp.argmax(soft, axis=-1) if soft.ndim == 2 else soft
        return loss, terms, hard

    def run_one(restart, key, target_grads, labels, shape):
        state, start = dlg.init(key, shape), time.perf_counter()
        while int(state.step) < iterations:
            state, _ = chunk(state, target_grads, labels, iterations)
            if not np.isfinite(float(state.loss)):
                log(f"  restart {restart + 1}/{restarts}: objective became non-finite by step {int(state.step)}")
                break
        loss, terms, hard = final(state.best_params, target_grads, labels)
        log(f"  restart {restart + 1}/{restarts}  {int(state.step)} L-BFGS steps  loss {float(loss):.3e}  "
            f"{time.perf_counter() - start:.1f} s")
        return float(loss), state.best_params["x"], terms, np.asarray(hard, np.int32)

    def invert(target_grads, labels, key, shape):
        best, losses = None, []
        for restart, restart_key in enumerate(jax.random.split(key, restarts)):
            loss, x, terms, hard = run_one(restart, restart_key, target_grads, labels, shape)
            losses.append(loss)
            if np.isfinite(loss) and (best is None or loss < best[1]):
                best = (restart, loss, x, terms, hard)
        if best is None:
            raise AttackDivergedError(f"the objective became NaN/Inf in all {restarts} restart(s)")
        restart, loss, x, terms, hard = best
        images01 = np.asarray(jnp.clip(denormalize(x), 0.0, 1.0))
        return DLGInversion(images01, hard, loss, {k: float(v) for k, v in terms.items()}, restart, losses)

    return invert
