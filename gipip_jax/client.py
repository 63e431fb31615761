"""The client side of federated learning: what a client computes and shares.

FedSGD: a client computes the gradient of the mean cross-entropy loss of one batch with respect
to the victim's parameters and shares it. `SharedUpdate` is the threat-model boundary: an
attacker sees that value and the model (victim + variables), never the client's images.

The victim runs in eval mode (BatchNorm uses its running statistics), as in GI-PIP and
Inverting Gradients, so the loss is a pure function of (params, images, labels).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import numpy as np
import optax

from gipip_jax.victims import Victim

PyTree = Any


class UpdateMismatchError(ValueError):
    """A gradient tree does not have the structure or shapes of the victim's parameters."""


@flax.struct.dataclass
class SharedUpdate:
    """What one client shares in a round: all the attacker may see besides the model.

    grads: pytree with the structure and shapes of the victim's params, the gradient of the
      mean CE loss over the batch.
    batch_size: number of examples behind the update (static metadata, not traced).
    """

    grads: PyTree
    batch_size: int = flax.struct.field(pytree_node=False)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy. logits (B, K); labels int (B,) or a distribution (B, K)."""
    if labels.ndim == logits.ndim:
        return optax.softmax_cross_entropy(logits, labels).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_loss_fn(victim: Victim, variables: dict) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """Returns loss(params, x, labels) -> scalar mean CE, victim in eval mode.

    x: (B, H, W, C) normalized images; labels int (B,) or soft (B, K). Non-param variables
    (BatchNorm running statistics) are held fixed.
    """
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss(params, x, labels):
        return cross_entropy(victim.apply({"params": params, **rest}, x), labels)

    return loss


def victim_gradient(victim: Victim, variables: dict, x: jax.Array, labels: jax.Array) -> PyTree:
    """Gradient of the batch's mean CE loss w.r.t. the victim's params (same tree as params)."""
    return jax.grad(make_loss_fn(victim, variables))(variables["params"], x, labels)


def per_example_gradients(victim: Victim, variables: dict, x: jax.Array, labels: jax.Array) -> PyTree:
    """Per-example gradients by vmap(grad): every leaf gets a leading axis of size B."""
    loss = make_loss_fn(victim, variables)

    def one(xi, yi):
        return jax.grad(loss)(variables["params"], xi[None], yi[None])

    return jax.vmap(one)(x, labels)


def fedsgd_update(victim: Victim, variables: dict, x: jax.Array, labels: jax.Array) -> SharedUpdate:
    """The FedSGD update of one client batch. x: (B, H, W, C) normalized; labels int (B,)."""
    return SharedUpdate(grads=victim_gradient(victim, variables, x, labels), batch_size=int(x.shape[0]))


def check_update_matches(grads: PyTree, params: PyTree) -> None:
    """Raises UpdateMismatchError naming the first difference between the two trees."""
    grad_paths = dict(jax.tree_util.tree_flatten_with_path(grads)[0])
    param_paths = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    missing = [jax.tree_util.keystr(p) for p in param_paths if p not in grad_paths]
    extra = [jax.tree_util.keystr(p) for p in grad_paths if p not in param_paths]
    if missing or extra:
        raise UpdateMismatchError(
            "the gradient tree does not match the victim's parameters: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}. "
            "Was the update computed on the same model?"
        )
    for path, p in param_paths.items():
        g_shape, p_shape = np.shape(grad_paths[path]), np.shape(p)
        if g_shape != p_shape:
            raise UpdateMismatchError(
                f"gradient leaf {jax.tree_util.keystr(path)} has shape {g_shape}, the victim's "
                f"parameter has {p_shape}. Was the update computed on the same model?"
            )
        if not np.all(np.isfinite(np.asarray(grad_paths[path]))):
            raise UpdateMismatchError(f"gradient leaf {jax.tree_util.keystr(path)} holds NaN or Inf values.")

