"""Learning to Invert (LTI; Wu, Chen, Guo, Weinberger, UAI 2023): a network trained on auxiliary
images to map a client's *defended* shared update to its images. Model, training, checkpoint.

Model (`InverterMLP`, pure Linen): features (N, F) -> Dense(hidden) -> ReLU -> Dense(hidden) -> ReLU
-> Dense(B*H*W*C) -> sigmoid: images (N, B, H, W, C) in [0, 1] (the victim's normalize maps them to
its input space). Features of an update tree (`features`): its leaves flattened in `jax.tree.leaves`
order (P values), whole when `num_bins` is 0 or >= P, else feature hashing into `num_bins` summed
bins (a fixed random bin per coordinate from `hash_seed`, no random signs, as the reference for
ResNet20), times one input scale (1 / RMS of the features of a calibration set of defended
auxiliary updates; the reference feeds raw gradients: a constant factor that only sets the input
layer's scale at init).

Training (`train`): every step is one jitted program: the client batches' images are gathered on the
device, their defended updates made by `jax.vmap` of `threat_models.aggregated_update(victim,
variables, x, labels, key=fold_in(step_key, i), defense=defenses.parse(defense_fields), **threat)` —
the threat model's FedSGD by default, FedAvg / secure aggregation by its fields — so noise and masks
are fresh at every step of every epoch; then pixel MSE on [0, 1] images, matched at B > 1 by the
minimum over all B! orderings inside jit (exact Hungarian matching; B <= MAX_MATCHED_BATCH), Adam
(learning_rate, 1e-4 in the reference), x0.1 from `decay_at` of the steps on (0.75, the reference's
epoch). The parameters kept are those with the lowest MSE on HELD-OUT auxiliary images (evaluated
with one fixed key), never on targets (the reference picks by test loss). The mean auxiliary image
is the baseline every inverter must beat. With `progress`, the training state is saved after every
held-out evaluation and a rerun of the same training resumes from it (the same result: every
epoch's order and keys come from the epoch number).

Checkpoint (`save` / `load`): `checkpoints.save` of {"mlp": params, "scale": f32 (), "bins": int32
(P,) when hashed} with metadata["inverter"] = {hidden, out_shape [B, H, W, C], num_params,
num_features, hashed}; loading checks the tree against a fresh model of that spec.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gipip_jax import checkpoints, defenses, threat_models

PyTree = Any
INVERTER_KEY = "inverter"
INVERTER_HINT = ("train one with `gipip-jax train-inverter --config experiments/configs/inverter_cifar10.py "
                 "--workdir WORKDIR`")
MAX_MATCHED_BATCH = 6   # 720 orderings per client batch
CALIBRATION_PAIRS = 256


class InverterMLP(nn.Module):
    """features (N, F) -> images (N, *out_shape) in [0, 1]; out_shape = (B, H, W, C)."""

    hidden: int
    out_shape: tuple[int, ...]

    @nn.compact
    def __call__(self, features):
        h = nn.relu(nn.Dense(self.hidden)(features))
        h = nn.relu(nn.Dense(self.hidden)(h))
        out = nn.Dense(math.prod(self.out_shape))(h)
        return jax.nn.sigmoid(out).reshape(features.shape[0], *self.out_shape)


class Spec(NamedTuple):
    """What rebuilds an inverter: hidden width, out_shape (B, H, W, C), the update's size P and
    the number of input features F (P when not hashed)."""

    hidden: int
    out_shape: tuple[int, ...]
    num_params: int
    num_features: int

    @property
    def hashed(self) -> bool:
        return self.num_features != self.num_params

    def to_json(self) -> dict:
        return {"hidden": self.hidden, "out_shape": list(self.out_shape), "num_params": self.num_params,
                "num_features": self.num_features, "hashed": self.hashed}


class Inverter(NamedTuple):
    """A trained inverter: module, tree {"mlp", "scale", ["bins"]}, spec, checkpoint metadata."""

    module: InverterMLP
    tree: dict
    spec: Spec
    metadata: dict

    def images01(self, update: PyTree) -> jax.Array:
        """The reconstruction (B, H, W, C) in [0, 1] of ONE shared update tree (traceable)."""
        feats = features(update, self.tree, self.spec.num_features)
        return self.module.apply({"params": self.tree["mlp"]}, feats[None])[0]


def make_spec(num_params: int, out_shape, *, hidden: int, num_bins: int = 0) -> Spec:
    num_features = num_params if not num_bins or num_bins >= num_params else int(num_bins)
    return Spec(int(hidden), tuple(int(d) for d in out_shape), int(num_params), num_features)


def hash_bins(num_params: int, num_bins: int, seed: int) -> np.ndarray:
    """int32 (num_params,): each coordinate's bin in [0, num_bins), fixed by `seed` (PCG64 raw
    output, stable across numpy versions)."""
    return (np.random.PCG64(seed).random_raw(num_params) % np.uint64(num_bins)).astype(np.int32)


def flatten(update: PyTree) -> jax.Array:
    """The update tree's leaves flattened and concatenated in jax.tree.leaves order: (P,)."""
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(update)])


def features(update: PyTree, frozen: Mapping, num_features: int) -> jax.Array:
    """(F,) input features of one update tree: whole, or summed into num_features bins by
    frozen["bins"] (P,) when present; times frozen["scale"]."""
    flat = flatten(update)
    if "bins" in frozen:
        flat = jax.ops.segment_sum(flat, frozen["bins"], num_segments=num_features)
    return flat * frozen["scale"]


def matched_mse(pred01: jax.Array, target01: jax.Array) -> jax.Array:
    """Per client batch MSE (N,) of pred vs target (N, B, H, W, C), minimized over the B! orderings
    of pred's images (B <= MAX_MATCHED_BATCH)."""
    count = pred01.shape[1]
    if count == 1:
        return jnp.mean((pred01 - target01) ** 2, axis=(1, 2, 3, 4))
    if count > MAX_MATCHED_BATCH:
        raise ValueError(f"matching orderings of {count} images is too costly; LTI supports B <= {MAX_MATCHED_BATCH}")
    cost = jnp.mean((target01[:, :, None] - pred01[:, None]) ** 2, axis=(3, 4, 5))   # (N, target, pred)
    orders = np.asarray(list(itertools.permutations(range(count))))                 # (P, B)
    totals = cost[:, np.arange(count)[None, :], orders].mean(axis=-1)               # (N, P)
    return jnp.min(totals, axis=1)


def make_pairs(victim, variables: dict, normalize: Callable, *, defense_fields: Mapping | None = None,
               threat: Mapping | None = None) -> Callable:
    """pairs(x01 (N, B, H, W, C) in [0, 1], labels int (N, B), keys (N,)) -> the N defended shared
    update trees (leaves (N, *param shape)): client i's `aggregated_update` with key keys[i]."""
    defense = defenses.parse(dict(defense_fields or {}))
    threat = threat_models.check_threat_config(dict(threat or {}))

    def one(x01, labels, key):
        return threat_models.aggregated_update(victim, variables, normalize(x01), labels, key=key,
                                               defense=defense, **threat).grads

    return jax.vmap(one)


def pair_keys(step_key: jax.Array, count: int) -> jax.Array:
    """The keys of a step's `count` client updates: fold_in(step_key, i)."""
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(count))


class TrainState(NamedTuple):
    params: PyTree
    opt_state: optax.OptState


def make_fit_step(module: InverterMLP, optimizer: optax.GradientTransformation) -> Callable:
    """fit_step(state, feats (N, F), targets01 (N, B, H, W, C)) -> (state, mean matched MSE)."""

    def fit_step(state, feats, targets01):
        def loss_fn(params):
            return jnp.mean(matched_mse(module.apply({"params": params}, feats), targets01))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    return fit_step


def make_step(pairs: Callable, fit_step: Callable, images01: jax.Array, labels: jax.Array, frozen: Mapping,
              num_features: int) -> Callable:
    """step(state, indices int (N, B), step_key) -> (state, loss): one jitted program making the N
    client batches' defended updates (keys `pair_keys(step_key, N)`), their features (`frozen`: the
    tree's "scale" and "bins"), then `fit_step`. images01 (n, H, W, C), labels (n,) on the device."""

    def step(state, indices, step_key):
        x, y = images01[indices], labels[indices]
        updates = pairs(x, y, pair_keys(step_key, indices.shape[0]))
        feats = jax.vmap(lambda u: features(u, frozen, num_features))(updates)
        return fit_step(state, feats, x)

    return jax.jit(step)


def _evaluator(module, pairs, frozen, num_features, images01, labels, client_batch: int, chunk: int, key: jax.Array):
    """evaluate(params) -> (mse, psnr): means over the held-out client batches (consecutive groups
    of client_batch images, one fixed key each) of the matched MSE and of 10 log10(1 / MSE)."""
    count = len(images01) // client_batch
    x = jnp.asarray(images01[:count * client_batch]).reshape(count, client_batch, *images01.shape[1:])
    y = jnp.asarray(labels[:count * client_batch]).reshape(count, client_batch)
    keys = pair_keys(key, count)

    @jax.jit
    def errors(params, x, y, keys):
        feats = jax.vmap(lambda u: features(u, frozen, num_features))(pairs(x, y, keys))
        return matched_mse(module.apply({"params": params}, feats), x)

    def evaluate(params):
        mse = np.concatenate([np.asarray(errors(params, x[s:s + chunk], y[s:s + chunk], keys[s:s + chunk]))
                              for s in range(0, count, chunk)])
        return float(mse.mean()), float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))

    return evaluate


def baseline(aux01: np.ndarray, heldout01: np.ndarray, client_batch: int) -> tuple[float, float]:
    """(MSE, PSNR) on the held-out client batches of predicting the mean auxiliary image for every image."""
    count = len(heldout01) // client_batch
    mse = np.mean((heldout01[:count * client_batch] - aux01.mean(axis=0)) ** 2, axis=(1, 2, 3))
    mse = mse.reshape(count, client_batch).mean(axis=1)
    return float(mse.mean()), float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def train(victim, variables: dict, aux01, aux_labels, heldout01, heldout_labels, *, normalize: Callable,
          client_batch: int = 1, defense_fields: Mapping | None = None, threat: Mapping | None = None,
          hidden: int = 3000, num_bins: int = 0, hash_seed: int = 0, epochs: int = 10, batch_size: int = 256,
          learning_rate: float = 1e-4, decay_at: float = 0.75, eval_every: int = 1, seed: int = 0,
          progress: str | None = None, log: Callable[[str], None] = print) -> tuple[dict, Spec, dict]:
    """Trains an inverter for `victim` (its `variables` fixed) and the given defense and threat model.

    aux01 (n, H, W, C) / heldout01 (m, H, W, C) float32 in [0, 1], labels int (n,) / (m,): every
    epoch splits a fresh permutation of the auxiliary images into n // client_batch client batches,
    run in steps of `batch_size` of them (last partial step dropped). Returns (tree of the kept
    params, spec, metrics: epochs, steps, seconds, updates_per_s (client updates of training per second,
    compiles excluded), best_epoch, heldout_mse, heldout_psnr, baseline_mse, baseline_psnr, train_loss).
    `progress`: a directory for the resume state, written after every held-out evaluation; when it
    exists, training continues from it (ValueError when another training wrote it).
    """
    aux01, heldout01 = np.asarray(aux01, np.float32), np.asarray(heldout01, np.float32)
    pairs_per_epoch = len(aux01) // client_batch
    batch_size = min(batch_size, pairs_per_epoch)
    if batch_size < 1 or len(heldout01) < client_batch:
        raise ValueError(f"LTI needs at least one auxiliary and one held-out client batch of {client_batch} images; "
                         f"got {len(aux01)} auxiliary and {len(heldout01)} held-out images")
    if not 0.0 < decay_at <= 1.0:
        raise ValueError(f"decay_at must be in (0, 1], got {decay_at}")
    pairs = make_pairs(victim, variables, normalize, defense_fields=defense_fields, threat=threat)
    num_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(variables["params"]))
    spec = make_spec(num_params, (client_batch, *aux01.shape[1:]), hidden=hidden, num_bins=num_bins)
    module = InverterMLP(spec.hidden, spec.out_shape)
    key = jax.random.key(seed)
    frozen = {"scale": jnp.ones((), jnp.float32)}
    if spec.hashed:
        frozen["bins"] = jnp.asarray(hash_bins(num_params, spec.num_features, hash_seed))
    # the input scale: 1 / RMS of the features of defended updates of (up to) CALIBRATION_PAIRS client batches
    calib = min(CALIBRATION_PAIRS, pairs_per_epoch)
    x_cal = jnp.asarray(aux01[:calib * client_batch]).reshape(calib, client_batch, *aux01.shape[1:])
    y_cal = jnp.asarray(aux_labels[:calib * client_batch]).reshape(calib, client_batch)
    raw = jax.jit(lambda x, y, k: jax.vmap(lambda u: features(u, frozen, spec.num_features))(pairs(x, y, k)))(
        x_cal, y_cal, pair_keys(jax.random.fold_in(key, 2), calib))
    rms = float(jnp.sqrt(jnp.mean(raw ** 2)))
    frozen["scale"] = jnp.asarray(1.0 / rms if rms > 0 else 1.0, jnp.float32)

    steps_per_epoch = pairs_per_epoch // batch_size
    total_steps = epochs * steps_per_epoch
    schedule = optax.piecewise_constant_schedule(learning_rate, {int(decay_at * total_steps): 0.1})
    optimizer = optax.adam(schedule)
    params = module.init(jax.random.fold_in(key, 0), jnp.zeros((1, spec.num_features)))["params"]
    state = TrainState(params, optimizer.init(params))
    step = make_step(pairs, make_fit_step(module, optimizer), jnp.asarray(aux01), jnp.asarray(aux_labels), frozen,
                     spec.num_features)
    evaluate = _evaluator(module, pairs, frozen, spec.num_features, heldout01, np.asarray(heldout_labels),
                          client_batch, batch_size, jax.random.fold_in(key, 3))
    base_mse, base_psnr = baseline(aux01, heldout01, client_batch)
    best = (np.inf, state.params, 0, np.nan)   # (held-out MSE, params, epoch, PSNR)
    if epochs == 0:
        mse, psnr = evaluate(state.params)
        best = (mse, state.params, 0, psnr)
    log(f"LTI: {spec.num_params} update values -> {spec.num_features} features -> hidden {spec.hidden} -> "
        f"{spec.out_shape} images; {pairs_per_epoch} client batches/epoch in {steps_per_epoch} steps of {batch_size}; "
        f"mean-image baseline held-out MSE {base_mse:.5f}")
    start, train_seconds, timed_steps, loss, done = time.perf_counter(), 0.0, 0, np.nan, 0
    identity = _training_identity(
        [variables["params"], aux01, aux_labels, heldout01, heldout_labels],
        dict(client_batch=client_batch, defense=dict(defense_fields or {}), threat=dict(threat or {}), hidden=hidden,
             num_bins=num_bins, hash_seed=hash_seed, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
             decay_at=decay_at, eval_every=eval_every, seed=seed))
    if progress and os.path.exists(progress):
        state, best, done, counters = _restore_progress(progress, state, identity)
        train_seconds, timed_steps, loss = counters["train_seconds"], counters["timed_steps"], counters["train_loss"]
        start -= counters["seconds"]
        log(f"LTI: resumed after epoch {done} of {epochs} from {progress} (best held-out MSE {best[0]:.5f} "
            f"at epoch {best[2]})")
    for epoch in range(done + 1, epochs + 1):
        epoch_key = jax.random.fold_in(jax.random.fold_in(key, 1), epoch)
        order = np.asarray(jax.random.permutation(jax.random.fold_in(epoch_key, 0), len(aux01)))
        groups = order[:steps_per_epoch * batch_size * client_batch].reshape(steps_per_epoch, batch_size, client_batch)
        losses, first = [], 1 if epoch == done + 1 else 0   # the first step of a process compiles: not timed
        for index in range(steps_per_epoch):
            if index == first:
                jax.block_until_ready(state)
                tick = time.perf_counter()
            state, step_loss = step(state, jnp.asarray(groups[index], jnp.int32),
                                    jax.random.fold_in(epoch_key, index + 1))
            losses.append(step_loss)
        loss = float(np.mean(jax.device_get(losses)))   # waits for the epoch's steps
        if steps_per_epoch > first:
            train_seconds += time.perf_counter() - tick
            timed_steps += steps_per_epoch - first
        line = f"epoch {epoch}/{epochs} train MSE {loss:.5f}"
        if epoch % eval_every == 0 or epoch == epochs:
            mse, psnr = evaluate(state.params)
            if mse < best[0]:
                best = (mse, state.params, epoch, psnr)
            line += f"  held-out MSE {mse:.5f} PSNR {psnr:.2f} dB (best {best[0]:.5f} at epoch {best[2]})"
            if progress and epoch < epochs:
                _save_progress(progress, state, best, epoch, identity, dict(
                    train_seconds=train_seconds, timed_steps=timed_steps, train_loss=loss,
                    seconds=time.perf_counter() - start))
        log(line)
    metrics = {"epochs": epochs, "steps": total_steps, "seconds": time.perf_counter() - start,
               "updates_per_s": timed_steps * batch_size / train_seconds if train_seconds > 0 else None,
               "best_epoch": best[2], "heldout_mse": best[0], "heldout_psnr": best[3], "baseline_mse": base_mse,
               "baseline_psnr": base_psnr, "train_loss": loss}
    tree = {"mlp": best[1], **frozen}
    return jax.tree.map(np.asarray, tree), spec, metrics


def _training_identity(arrays: list, settings: dict) -> str:
    """A digest of a training's inputs (victim weights, images, labels) and settings: what a resume checks."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for leaf in jax.tree.leaves(arrays):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def _save_progress(path: str, state: TrainState, best: tuple, epoch: int, identity: str, counters: dict) -> None:
    """The resume state after `epoch`: params, optimizer state and the best params so far, with the counters."""
    leaves = jax.tree.leaves(state.opt_state)
    tree = {"params": state.params, "best": best[1], "opt": {f"{i:04d}": leaf for i, leaf in enumerate(leaves)}}
    checkpoints.save(path, tree, {"identity": identity, "epoch": epoch, "best_mse": best[0], "best_epoch": best[2],
                                  "best_psnr": best[3], **counters}, overwrite=True)


def _restore_progress(path: str, fresh: TrainState, identity: str) -> tuple[TrainState, tuple, int, dict]:
    """(state, best, epoch, counters) saved by `_save_progress`, onto the structure of `fresh`."""
    tree, meta = checkpoints.restore(path)
    if meta.get("identity") != identity:
        raise ValueError(f"{path} holds the progress of another LTI training (other data, victim or settings); "
                         f"delete it to start this one from the beginning")
    like = lambda ref, got: jax.tree.map(lambda r, g: jnp.asarray(g, r.dtype), ref, got)  # noqa: E731
    opt_leaves, treedef = jax.tree.flatten(fresh.opt_state)
    opt = jax.tree.unflatten(treedef, [jnp.asarray(tree["opt"][f"{i:04d}"], leaf.dtype)
                                       for i, leaf in enumerate(opt_leaves)])
    state = TrainState(like(fresh.params, tree["params"]), opt)
    best = (float(meta["best_mse"]), like(fresh.params, tree["best"]), int(meta["best_epoch"]), float(meta["best_psnr"]))
    return state, best, int(meta["epoch"]), meta


def _expected_tree(spec: Spec) -> tuple[InverterMLP, dict]:
    module = InverterMLP(spec.hidden, spec.out_shape)
    params = jax.eval_shape(lambda k: module.init(k, jnp.zeros((1, spec.num_features)))["params"], jax.random.key(0))
    tree = {"mlp": params, "scale": jax.ShapeDtypeStruct((), jnp.float32)}
    if spec.hashed:
        tree["bins"] = jax.ShapeDtypeStruct((spec.num_params,), jnp.int32)
    return module, tree


def save(path, tree: dict, spec: Spec, metadata: dict, *, overwrite: bool = False):
    """Saves a trained inverter (see `train`); metadata["inverter"] = spec.to_json()."""
    problems = checkpoints.tree_mismatches(tree, _expected_tree(spec)[1])
    if problems:
        raise ValueError(f"the inverter tree to save does not match {spec.to_json()}: {'; '.join(problems[:5])}")
    return checkpoints.save(path, tree, {**metadata, INVERTER_KEY: spec.to_json()}, overwrite=overwrite)


def load(path, *, hint: str = INVERTER_HINT) -> Inverter:
    """The Inverter of a checkpoint saved by `save`. CheckpointError when it is missing, corrupt, not
    an inverter checkpoint, or its tree does not match the model its metadata describes."""
    tree, metadata = checkpoints.restore(path, hint=hint)
    raw = metadata.get(INVERTER_KEY)
    if not isinstance(raw, dict) or not {"hidden", "out_shape", "num_params", "num_features"} <= raw.keys():
        raise checkpoints.CheckpointError(f"{path} is not an inverter checkpoint (its metadata has no complete "
                                          f"{INVERTER_KEY!r} entry)")
    spec = Spec(int(raw["hidden"]), tuple(int(d) for d in raw["out_shape"]), int(raw["num_params"]),
                int(raw["num_features"]))
    module, expected = _expected_tree(spec)
    problems = checkpoints.tree_mismatches(tree, expected)
    if problems:
        raise checkpoints.CheckpointError(f"checkpoint {path} does not match the inverter {spec.to_json()}: "
                                          f"{'; '.join(problems[:5])}")
    return Inverter(module, tree, spec, metadata)
