"""Training loops on in-memory arrays: victim classifiers and GI-PIP's AE prior.

Both trainers share one epoch loop (:func:`_fit`): every epoch draws a fresh
permutation, runs the jitted step on each full minibatch (a final partial batch
is dropped so shapes stay fixed and the step compiles once), averages the step
metrics and logs one line. Evaluation runs in fixed-size batches with the last
one padded (:func:`_map_in_batches`). All randomness derives from ``seed``, so
a run is deterministic.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, Protocol

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from gipip_jax.autoencoder import Autoencoder, init_autoencoder_params, make_autoencoder
from gipip_jax.victims import Victim

EVAL_BATCH_SIZE = 256
CROP_PADDING = 4


class Normalizer(Protocol):
    """What the trainers need of a ``data.DatasetInfo``: [0, 1] images -> normalized, jax-traceable."""

    def normalize(self, x01: jax.Array) -> jax.Array: ...


GradientFn = Callable[[dict, jax.Array, jax.Array, jax.Array], Any]
StepFn = Callable[[Any, tuple[jax.Array, ...], jax.Array, jax.Array], tuple[Any, dict[str, jax.Array]]]


def _fit(
    step: StepFn,
    state: Any,
    data: tuple[jax.Array, ...],
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    evaluate: Callable[[Any], dict[str, float]],
    log: Callable[[str], None],
    stop: Callable[[dict[str, float]], bool] | None = None,
) -> tuple[Any, dict[str, float], int]:
    """Runs ``epochs`` epochs of ``step(state, data, batch_indices, key) -> (state, metrics)``,
    fewer when ``stop(summary)`` holds after an epoch.

    ``data`` holds arrays with a leading example axis; ``batch_indices`` is int32
    (batch_size,). Returns the final state, the last epoch's mean step metrics plus
    ``evaluate(state)`` (the evaluation alone when epochs == 0), and the epochs run.
    """
    num_examples = data[0].shape[0]
    steps_per_epoch = num_examples // batch_size
    if epochs > 0 and steps_per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")
    summary = evaluate(state) if epochs == 0 else {}
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        epoch_key = jax.random.fold_in(key, epoch)
        order = jax.random.permutation(jax.random.fold_in(epoch_key, 0), num_examples)
        batches = np.asarray(order[: steps_per_epoch * batch_size]).reshape(steps_per_epoch, batch_size)
        step_keys = jax.random.split(jax.random.fold_in(epoch_key, 1), steps_per_epoch)
        totals: dict[str, jax.Array] = {}
        for index in range(steps_per_epoch):
            state, metrics = step(state, data, batches[index], step_keys[index])
            totals = {name: totals.get(name, 0.0) + value for name, value in metrics.items()}
        summary = {name: float(total) / steps_per_epoch for name, total in totals.items()}
        summary.update(evaluate(state))
        parts = " ".join(f"{name} {value:.4f}" for name, value in summary.items())
        log(f"epoch {epoch}/{epochs} {parts} ({time.perf_counter() - start:.1f}s)")
        if stop is not None and stop(summary):
            log(f"stopped after epoch {epoch}: the stopping rule holds")
            return state, summary, epoch
    return state, summary, epochs


def _map_in_batches(fn: Callable[[jax.Array], jax.Array], x: np.ndarray | jax.Array) -> np.ndarray:
    """``fn`` applied to ``x`` (N, ...) in batches of ``min(N, EVAL_BATCH_SIZE)`` rows, the
    last batch zero-padded so ``fn`` sees one shape; returns the N per-row outputs."""
    num_rows = x.shape[0]
    if num_rows == 0:
        raise ValueError("cannot evaluate on an empty set of images")
    batch = min(num_rows, EVAL_BATCH_SIZE)
    pad = -num_rows % batch
    x = jnp.concatenate([jnp.asarray(x), jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    outputs = [np.asarray(fn(x[start : start + batch])) for start in range(0, x.shape[0], batch)]
    return np.concatenate(outputs)[:num_rows]


def augment_batch(key: jax.Array, images01: jax.Array, padding: int = CROP_PADDING) -> jax.Array:
    """Random crop after zero-padding by ``padding`` px, then random horizontal flip.

    images01: (B, H, W, C) in [0, 1]; returns the same shape, per-image random.
    """
    height, width, channels = images01.shape[1:]
    padded = jnp.pad(images01, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def one(image_key, image):
        crop_key, flip_key = jax.random.split(image_key)
        image = pix.random_crop(crop_key, image, (height, width, channels))
        return pix.random_flip_left_right(flip_key, image)

    return jax.vmap(one)(jax.random.split(key, images01.shape[0]), padded)


class _VictimState(train_state.TrainState):
    batch_stats: Any


def _make_predict(victim: Victim, info: Normalizer) -> Callable[[dict, jax.Array], jax.Array]:
    """Jitted ``predict(variables, x01) -> int (B,)``: eval-mode class of images x01 in [0, 1]."""
    return jax.jit(lambda variables, x01: jnp.argmax(victim.apply(variables, info.normalize(x01)), axis=-1))


def _accuracy(predict, variables: dict, images01, labels) -> float:
    predictions = _map_in_batches(functools.partial(predict, variables), images01)
    return float(np.mean(predictions == np.asarray(labels)))


def victim_accuracy(victim: Victim, variables: dict, images01, labels, *, info: Normalizer) -> float:
    """Eval-mode top-1 accuracy of ``victim`` on images01 (N, H, W, C) in [0, 1], labels int (N,)."""
    return _accuracy(_make_predict(victim, info), variables, images01, labels)


def train_victim(
    victim: Victim,
    images01,
    labels,
    *,
    info: Normalizer,
    epochs: int,
    batch_size: int = 128,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    eval_images01=None,
    eval_labels=None,
    augment: bool = True,
    gradient_fn: GradientFn | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict, dict]:
    """Trains ``victim`` with cross-entropy and SGD + momentum; returns ``(variables, metrics)``.

    images01: float (N, H, W, C) in [0, 1], labels int (N,); images are normalized
    inside the step with ``info.normalize``, after the (optional) random crop
    (zero pad 4) + horizontal flip. Weight decay is added to the gradient (as in
    PyTorch's SGD) for all parameters; the learning rate follows a cosine decay
    from ``learning_rate`` to 0 over all steps. BN running statistics are updated.
    The initial variables are ``victim.init(jax.random.key(seed))``, which
    ``epochs=0`` returns unchanged (the paper's untrained victim).

    ``gradient_fn(variables, x, labels, key) -> grads`` (x normalized (B, H, W, C), labels int
    (B,), a fresh key per step) replaces the train-mode gradient with what a (defended) federated
    client shares, e.g. ``threat_models.client_update(...).grads``: the server then applies it.
    Such a client runs the victim in eval mode, so BN running statistics stay as initialized, and
    the train loss/accuracy metrics come from an eval-mode forward pass.

    metrics (JSON-serializable): ``epochs``, ``seconds``, ``train_loss`` and
    ``train_acc`` (means over the last epoch's augmented train-mode batches, None
    when epochs == 0) and ``eval_acc`` (eval mode, None without eval images).
    """
    start = time.perf_counter()
    key = jax.random.key(seed)
    variables = victim.init(key)
    images01 = jnp.asarray(images01, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    steps_per_epoch = max(images01.shape[0] // batch_size, 1)
    schedule = optax.cosine_decay_schedule(learning_rate, max(epochs * steps_per_epoch, 1))
    state = _VictimState.create(
        apply_fn=victim.apply,
        params=variables["params"],
        tx=optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum)),
        batch_stats=variables.get("batch_stats", {}),
    )

    def variables_of(state: _VictimState) -> dict:
        return {"params": state.params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}

    @jax.jit
    def step(state: _VictimState, data, batch_indices, step_key):
        x01, y = data[0][batch_indices], data[1][batch_indices]
        if augment:
            x01 = augment_batch(step_key, x01)
        x = info.normalize(x01)

        def loss_fn(params):
            logits, batch_stats = victim.apply({**variables_of(state), "params": params}, x, train=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, batch_stats)

        if gradient_fn is None:
            (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        else:
            grads = gradient_fn(variables_of(state), x, y, jax.random.fold_in(step_key, 1))
            logits, batch_stats = victim.apply(variables_of(state), x), state.batch_stats
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        return state, {"train_loss": loss, "train_acc": jnp.mean(jnp.argmax(logits, -1) == y)}

    predict = _make_predict(victim, info)

    def evaluate(state: _VictimState) -> dict[str, float]:
        if eval_images01 is None or len(eval_images01) == 0:
            return {}
        return {"eval_acc": _accuracy(predict, variables_of(state), eval_images01, eval_labels)}

    state, summary, _ = _fit(
        step, state, (images01, labels), epochs=epochs, batch_size=batch_size,
        key=jax.random.fold_in(key, 1), evaluate=evaluate, log=log,
    )
    metrics = {
        "epochs": epochs,
        "train_loss": summary.get("train_loss"),
        "train_acc": summary.get("train_acc"),
        "eval_acc": summary.get("eval_acc"),
        "seconds": time.perf_counter() - start,
    }
    return variables_of(state), metrics


def _bce_loss(autoencoder: Autoencoder, params, x01):
    logits = autoencoder.apply({"params": params}, x01, method=Autoencoder.reconstruction_logits)
    return optax.sigmoid_binary_cross_entropy(logits, x01).mean()


def _mse_loss(autoencoder: Autoencoder, params, x01):
    return jnp.mean((autoencoder.apply({"params": params}, x01) - x01) ** 2)


# recipe -> (loss(autoencoder, params, x01) -> scalar, optimizer factory, default learning rate)
AE_RECIPES: dict[str, tuple[Callable, Callable[[float], optax.GradientTransformation], float]] = {
    "bce_adadelta": (_bce_loss, optax.adadelta, 0.1),  # GI-PIP's reference recipe (batch 16)
    "mse_adam": (_mse_loss, optax.adam, 1e-3),
}


def check_recipe(recipe: str) -> None:
    """ValueError for a recipe not in AE_RECIPES."""
    if recipe not in AE_RECIPES:
        raise ValueError(f"unknown autoencoder recipe {recipe!r}; choose one of {', '.join(AE_RECIPES)}")


@functools.partial(jax.jit, static_argnums=0)
def _per_image_mse(autoencoder: Autoencoder, params, x01: jax.Array) -> jax.Array:
    return jnp.mean((autoencoder.apply({"params": params}, x01) - x01) ** 2, axis=(1, 2, 3))


def autoencoder_reconstruction_errors(autoencoder: Autoencoder, params, images01) -> np.ndarray:
    """Per-image reconstruction MSE (N,) on [0, 1] of images01 (N, H, W, C) in [0, 1]."""
    return _map_in_batches(functools.partial(_per_image_mse, autoencoder, params), images01)


def train_autoencoder(
    images01,
    *,
    recipe: str = "bce_adadelta",
    epochs: int,
    batch_size: int = 16,
    learning_rate: float | None = None,
    seed: int = 0,
    heldout01=None,
    target_heldout_mse: float | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict, dict]:
    """Trains GI-PIP's AE on images01 (N, H, W, 3) in [0, 1]; returns ``(params, metrics)``.

    Recipes (:data:`AE_RECIPES`): ``bce_adadelta`` (BCE, Adadelta lr 0.1, GI-PIP's
    reference) and ``mse_adam`` (MSE, Adam lr 1e-3); ``learning_rate=None`` uses
    the recipe's. ``params`` is the ``'params'`` collection: reconstruct with
    ``make_autoencoder().apply({'params': params}, x01)``. Initial params come
    from ``jax.random.key(seed)``.

    metrics (JSON-serializable): ``recipe``, ``learning_rate``, ``epochs``,
    ``seconds``, ``train_loss`` (mean over the last epoch, None when epochs == 0)
    and, with non-empty ``heldout01``, ``heldout_mse`` (mean over held-out images of the
    per-image MSE on [0, 1]) with its ``heldout_mse_std`` and ``heldout_mse_median``.

    ``target_heldout_mse``: stop after the first epoch whose held-out MSE is at most this
    (``epochs`` is then the most run; needs ``heldout01``); ``epochs`` in the metrics is the number
    run, with ``max_epochs``, ``target_heldout_mse`` and ``reached_target``.
    """
    check_recipe(recipe)
    if target_heldout_mse is not None and (heldout01 is None or len(heldout01) == 0):
        raise ValueError("target_heldout_mse needs held-out images (heldout_count > 0)")
    loss_of, optimizer, default_learning_rate = AE_RECIPES[recipe]
    learning_rate = default_learning_rate if learning_rate is None else learning_rate
    start = time.perf_counter()
    key = jax.random.key(seed)
    images01 = jnp.asarray(images01, jnp.float32)
    autoencoder = make_autoencoder()
    state = train_state.TrainState.create(
        apply_fn=autoencoder.apply,
        params=init_autoencoder_params(autoencoder, key, images01.shape[1:]),
        tx=optimizer(learning_rate),
    )

    @jax.jit
    def step(state: train_state.TrainState, data, batch_indices, step_key):
        del step_key  # the AE trains without augmentation
        loss, grads = jax.value_and_grad(lambda p: loss_of(autoencoder, p, data[0][batch_indices]))(state.params)
        return state.apply_gradients(grads=grads), {"train_loss": loss}

    def evaluate(state: train_state.TrainState) -> dict[str, float]:
        if heldout01 is None or len(heldout01) == 0:
            return {}
        errors = autoencoder_reconstruction_errors(autoencoder, state.params, heldout01)
        return {
            "heldout_mse": float(errors.mean()),
            "heldout_mse_std": float(errors.std()),
            "heldout_mse_median": float(np.median(errors)),
        }

    reached = None if target_heldout_mse is None else (lambda summary: summary["heldout_mse"] <= target_heldout_mse)
    state, summary, ran = _fit(
        step, state, (images01,), epochs=epochs, batch_size=batch_size,
        key=jax.random.fold_in(key, 1), evaluate=evaluate, log=log, stop=reached,
    )
    target = {} if reached is None else {"max_epochs": epochs, "target_heldout_mse": float(target_heldout_mse),
                                         "reached_target": bool(reached(summary))}
    metrics = {
        "recipe": recipe,
        "learning_rate": float(learning_rate),
        "epochs": ran,
        **target,
        "train_loss": summary.get("train_loss"),
        **{name: value for name, value in summary.items() if name.startswith("heldout_")},
        "seconds": time.perf_counter() - start,
    }
    return state.params, metrics
