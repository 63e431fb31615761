"""Label recovery from a shared update: iDLG for one image, three published strategies for a batch.

All strategies read only the gradient of the victim's classification layer (the last Dense,
kernel (F, K), bias (K,)) from the `SharedUpdate`, plus, for `bias_count`, the model itself.
With the mean cross-entropy loss over a batch of B examples,

    dW[:, c] = (1/B) sum_i (p_ic - y_ic) h_i,        db[c] = (1/B) sum_i (p_ic - y_ic),

with h_i >= 0 the penultimate features (sigmoid, ReLU) and p_i the softmax output.

- `idlg` (Zhao et al., 2020), B = 1: only the true class's column of dW is negative; the label
  is the argmin of the column sums. Exact for non-negative features.
- `yin` (GradInversion, Yin et al., 2021): the B classes whose dW column has the most negative
  minimum entry. Assumes unique labels (never predicts a repeat).
- `llg` (LLG, Wainakh et al., 2022): column sums g_c of dW; the "impact" of one example is
  m = (sum of the negative g_c) / B; every class with g_c < 0 gets a label and g_c -= m, then the
  class with the smallest g_c takes the next label (g_c -= m again) until B labels: repeats allowed.
- `bias_count` (after Geng et al., 2021, "Towards general deep leakage"): from the bias gradient,
  count_c = B (p̄_c - db_c), with p̄ the mean softmax output estimated on random dummy images
  (the attacker holds the model); labels are taken greedily by largest remaining count:
  repeats allowed.

Recovered labels come back sorted (a batch's order is not recoverable from a FedSGD gradient);
`accuracy` compares them with the truth as multisets.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gipip_jax.victims import Victim

PyTree = Any
STRATEGIES = ("idlg", "yin", "llg", "bias_count")


def classifier_gradient(grads: PyTree, num_classes: int) -> tuple[jax.Array, jax.Array | None]:
    """(dW (F, K), db (K,) or None) of the one Dense layer with K = num_classes outputs in `grads`."""
    found = []

    def visit(node):
        if isinstance(node, dict):
            kernel = node.get("kernel")
            if kernel is not None and np.ndim(kernel) == 2 and np.shape(kernel)[1] == num_classes:
                found.append((jnp.asarray(kernel), None if node.get("bias") is None else jnp.asarray(node["bias"])))
            for child in node.values():
                visit(child)

    visit(grads)
    if len(found) != 1:
        raise ValueError(f"label recovery needs exactly one dense layer with {num_classes} outputs in the "
                         f"gradient tree, found {len(found)}")
    return found[0]


def idlg(grads: PyTree, num_classes: int) -> np.ndarray:
    """iDLG's label of a single image: int (1,), the class whose dW column sums lowest."""
    weight, _ = classifier_gradient(grads, num_classes)
    return np.asarray([int(jnp.argmin(weight.sum(axis=0)))], np.int32)


def yin(grads: PyTree, num_classes: int, batch_size: int) -> np.ndarray:
    """GradInversion's labels: int (B,) sorted, the B classes with the most negative dW entry."""
    weight, _ = classifier_gradient(grads, num_classes)
    if batch_size > num_classes:
        raise ValueError(f"the 'yin' strategy recovers unique labels only; batch size {batch_size} > "
                         f"{num_classes} classes")
    return np.sort(np.argsort(np.asarray(weight.min(axis=0)), kind="stable")[:batch_size]).astype(np.int32)


def _greedy(scores: np.ndarray, step: float, batch_size: int) -> np.ndarray:
    """Takes batch_size labels one at a time, each the argmin of `scores`, adding `step` to it after."""
    scores, labels = np.array(scores, np.float64), []
    for _ in range(batch_size):
        c = int(np.argmin(scores))
        labels.append(c)
        scores[c] += step
    return np.sort(np.asarray(labels, np.int32))


def llg(grads: PyTree, num_classes: int, batch_size: int) -> np.ndarray:
    """LLG's labels: int (B,) sorted, repeats allowed (see the module docstring)."""
    weight, _ = classifier_gradient(grads, num_classes)
    g = np.asarray(weight.sum(axis=0), np.float64)
    negative = np.flatnonzero(g < 0)
    impact = g[negative].sum() / batch_size  # <= 0: one example's share of the negative mass
    if impact == 0:
        return _greedy(g, 1.0, batch_size)
    # Stage 1: every negative class holds at least one label (the most negative first if > B).
    first = negative[np.argsort(g[negative], kind="stable")][:batch_size]
    g[first] -= impact
    # Stage 2: the remaining labels go, one at a time, to the lowest remaining g_c.
    rest = _greedy(g, -impact, batch_size - len(first))
    return np.sort(np.concatenate([first, rest]).astype(np.int32))


def mean_probabilities(victim: Victim, variables: dict, key: jax.Array, count: int = 64) -> np.ndarray:
    """The victim's mean softmax output (K,) over `count` random images, pixels ~ N(0, 1) normalized."""
    x = jax.random.normal(key, (count, *victim.image_shape), jnp.float32)
    return np.asarray(jax.nn.softmax(victim.apply(variables, x), axis=-1).mean(axis=0))


def bias_count(grads: PyTree, num_classes: int, batch_size: int, mean_probs: np.ndarray) -> np.ndarray:
    """Bias-corrected counts: int (B,) sorted, repeats allowed. mean_probs: (K,) estimate of p̄."""
    _, bias = classifier_gradient(grads, num_classes)
    if bias is None:
        raise ValueError("the 'bias_count' strategy needs a bias in the classification layer")
    counts = batch_size * (np.asarray(mean_probs, np.float64) - np.asarray(bias, np.float64))
    return _greedy(-counts, 1.0, batch_size)


def recover(strategy: str, grads: PyTree, batch_size: int, victim: Victim, variables: dict,
            key: jax.Array) -> np.ndarray:
    """Labels int (B,) of the batch behind `grads` by `strategy` (one of STRATEGIES)."""
    k = victim.num_classes
    if strategy == "idlg":
        if batch_size != 1:
            raise ValueError(f"iDLG recovers the label of a single image; batch size is {batch_size} "
                             f"(use one of {STRATEGIES[1:]})")
        return idlg(grads, k)
    if strategy == "yin":
        return yin(grads, k, batch_size)
    if strategy == "llg":
        return llg(grads, k, batch_size)
    if strategy == "bias_count":
        return bias_count(grads, k, batch_size, mean_probabilities(victim, variables, key))
    raise ValueError(f"unknown label strategy {strategy!r}; choose one of {STRATEGIES}")


def accuracy(predicted, true) -> float:
    """Share of the true labels (B,) recovered, comparing as multisets (order-free). In [0, 1]."""
    predicted, true = np.asarray(predicted).ravel(), np.asarray(true).ravel()
    if predicted.shape != true.shape:
        raise ValueError(f"predicted labels {predicted.shape} and true labels {true.shape} differ in shape")
    values = np.union1d(predicted, true)
    hits = sum(min(np.sum(predicted == v), np.sum(true == v)) for v in values)
    return float(hits) / len(true)
