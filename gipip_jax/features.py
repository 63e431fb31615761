"""Feature matching: the input of the victim's classification layer, read off the shared update.

For a dense layer y = h W + b and any loss, dL/dW = sum_i h_i^T g_i and dL/db = sum_i g_i with
g_i = dL/dy_i (the batch mean just scales both). For ONE image, column c of dW is h * g_c and
db[c] = g_c, so  h = dW[:, c] / db[c]  exactly, for any class c with db[c] != 0; we take the class
with the largest |db[c]| (numerically the safest).

For a batch (B > 1) the ratio is a g-weighted mean of the batch's features,
dW[:, c] / db[c] = sum_i g_ic h_i / sum_i g_ic. We use the stated approximation
  h_i ~= dW[:, y_i] / db[y_i]  for image i with label y_i:
with cross-entropy g_ic = p_ic - [c = y_i], so column y_i is dominated by image i's (p - 1) term
and the other images enter with weight p_jc (their softmax mass on class y_i; ~1/K for an
untrained victim). It is exact when that mass is 0 and needs distinct labels (images sharing a
label get the same, mixed, estimate). The published tensor-decomposition recovery (seed 002) that
separates the h_i exactly is not implemented.

The candidate's features come from the victim's forward pass with `flax.linen.intercept_methods`
(the input of its last `nn.Dense` call), and the term is the relative squared error
  sum_i ||f_i(x) - h_i||^2 / ||h_i||^2  / B.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from gipip_jax.labels import classifier_gradient
from gipip_jax.victims import Victim

PyTree = Any


def recover_features(grads: PyTree, labels: jax.Array, num_classes: int) -> jax.Array:
    """Features (B, F) of the classification layer's input, from the shared update.

    grads: the update tree (must hold exactly one dense layer with num_classes outputs, with a
    bias); labels: int (B,) or soft (B, K) (argmax taken). B = 1: exact (largest |db| column);
    B > 1: each image's label column (the approximation in the module docstring). jax-traceable.
    """
    weight, bias = classifier_gradient(grads, num_classes)
    if bias is None:
        raise ValueError("feature recovery needs the classification layer's bias gradient; this victim's has no bias")
    labels = jnp.asarray(labels)
    labels = jnp.argmax(labels, axis=-1) if labels.ndim == 2 else labels
    if labels.shape[0] == 1:
        columns = jnp.argmax(jnp.abs(bias))[None]
    else:
        columns = labels.astype(jnp.int32)
    safe = jnp.where(jnp.abs(bias) > 1e-30, bias, 1e-30)
    return (weight[:, columns] / safe[columns]).T


def classifier_input(victim: Victim, variables: dict, x: jax.Array) -> jax.Array:
    """The input (B, F) of the victim's last nn.Dense call on normalized images x (eval mode)."""
    found = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            found.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        victim.apply(variables, x)
    if not found:
        raise ValueError(f"feature matching needs a victim with a dense classification layer; {victim.name!r} has none")
    return found[-1].reshape(x.shape[0], -1)


def feature_matching_loss(victim: Victim, variables: dict, num_classes: int
                          ) -> Callable[[jax.Array, PyTree, jax.Array], jax.Array]:
    """Returns feat(x, target_grads, labels) -> mean over images of ||f_i(x) - h_i||^2 / ||h_i||^2."""

    def feat(x, target_grads, labels):
        target = jax.lax.stop_gradient(recover_features(target_grads, labels, num_classes))
        candidate = classifier_input(victim, variables, x)
        error = jnp.sum((candidate - target) ** 2, axis=-1) / jnp.maximum(jnp.sum(target ** 2, axis=-1), 1e-12)
        return jnp.mean(error)

    return feat
