"""The GAN prior of GIAS-style attacks: a DCGAN in Flax Linen, its training, its checkpoint.

Generator (DCGAN, Radford et al. 2016, sized for 32 or 64 px): z (B, Z) -> Dense to a 4x4 map of
width * 2^(stages-1) channels, BN, ReLU, then `stages` = log2(side / 4) transposed convs (k4, s2,
PyTorch padding 1) halving the width each time, BN + ReLU between, tanh out: images (B, side,
side, C) in [-1, 1]. 32 px: 3 upsampling stages (4 -> 8 -> 16 -> 32), 64 px: 4.
Discriminator: convs k4 s2 p1 with LeakyReLU 0.2 down to 4x4, a dense logit; no normalization
(so it runs on any batch without mutable state).

Training (`train_gan`): the standard DCGAN recipe through optax: non-saturating BCE losses
(D: real -> 1, fake -> 0; G: fake -> 1), Adam lr 2e-4, b1 0.5, batch 64, on [0, 1] images mapped
to [-1, 1]. BN in the generator runs in train mode during training; its running averages
(momentum 0.9) are what the attack uses (eval mode).

Checkpoint (`save_gan` / `load_gan`): `checkpoints.save` of {"generator": {params, batch_stats},
"discriminator": params} with metadata["gan"] = {latent_dim, width, image_shape}; loading checks
the tree against a fresh init of those modules.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gipip_jax import checkpoints

GAN_KEY = "gan"
GAN_HINT = "train one with `gipip-jax train-gan --config experiments/configs/gan_cifar10.py --workdir WORKDIR`"
KERNEL, TORCH_PADDING = 4, 1
TRANSPOSE_PADDING = KERNEL - 1 - TORCH_PADDING   # PyTorch ConvTranspose2d(k4, s2, p1) doubles H, W


def upsampling_stages(side: int) -> int:
    """Number of x2 stages from 4x4 to `side` (8, 16, 32, 64, ...); ValueError otherwise."""
    stages = int(round(math.log2(side / 4))) if side >= 8 else 0
    if side < 8 or 4 * 2 ** stages != side:
        raise ValueError(f"the DCGAN makes square images of side 4 * 2^k >= 8 (e.g. 32 or 64 px), got {side}")
    return stages


class Generator(nn.Module):
    """z (B, latent_dim) -> images (B, side, side, channels) in [-1, 1]."""

    side: int = 32
    channels: int = 3
    width: int = 64

    @nn.compact
    def __call__(self, z, train: bool = False):
        stages = upsampling_stages(self.side)
        top = self.width * 2 ** (stages - 1)
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)  # noqa: E731
        x = nn.Dense(4 * 4 * top, use_bias=False)(z).reshape(z.shape[0], 4, 4, top)
        x = nn.relu(bn()(x))
        for stage in range(stages):
            last = stage == stages - 1
            features = self.channels if last else top // 2 ** (stage + 1)
            x = nn.ConvTranspose(features, (KERNEL, KERNEL), strides=(2, 2), padding=TRANSPOSE_PADDING,
                                 transpose_kernel=True, use_bias=last)(x)
            x = jnp.tanh(x) if last else nn.relu(bn()(x))
        return x


class Discriminator(nn.Module):
    """images (B, side, side, C) in [-1, 1] -> real/fake logits (B,)."""

    width: int = 64

    @nn.compact
    def __call__(self, x):
        stages = upsampling_stages(x.shape[1])
        for stage in range(stages):
            x = nn.Conv(self.width * 2 ** stage, (KERNEL, KERNEL), strides=2, padding=TORCH_PADDING)(x)
            x = nn.leaky_relu(x, 0.2)
        return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]


def make_gan(image_shape, *, width: int = 64) -> tuple[Generator, Discriminator]:
    """The generator and discriminator for images of shape (side, side, C)."""
    side, other, channels = (int(d) for d in image_shape)
    if side != other:
        raise ValueError(f"the DCGAN makes square images, got image shape {tuple(image_shape)}")
    upsampling_stages(side)
    return Generator(side, channels, width), Discriminator(width)


def init_gan(generator: Generator, discriminator: Discriminator, key: jax.Array, latent_dim: int) -> dict:
    """{"generator": {params, batch_stats}, "discriminator": params} of fresh modules."""
    g_key, d_key = jax.random.split(key)
    g_vars = generator.init(g_key, jnp.zeros((1, latent_dim), jnp.float32))
    images = jnp.zeros((1, generator.side, generator.side, generator.channels), jnp.float32)
    return {"generator": dict(g_vars), "discriminator": discriminator.init(d_key, images)["params"]}


def train_gan(images01, *, epochs: int, latent_dim: int = 100, width: int = 64, batch_size: int = 64,
              learning_rate: float = 2e-4, b1: float = 0.5, seed: int = 0,
              log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Trains a DCGAN on images01 (N, H, W, C) in [0, 1]; returns (tree, metrics).

    tree: {"generator": {params, batch_stats}, "discriminator": params}; metrics: epochs, steps,
    seconds, and the last epoch's mean d_loss, g_loss, d_real (mean D(x) probability on real),
    d_fake (on fakes). Deterministic in `seed`; the last partial batch of an epoch is dropped.
    """
    images01 = np.asarray(images01, np.float32)
    if len(images01) < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(images01)} training images")
    generator, discriminator = make_gan(images01.shape[1:], width=width)
    key = jax.random.key(seed)
    tree = init_gan(generator, discriminator, key, latent_dim)
    tx = optax.adam(learning_rate, b1=b1)
    state = (tree, tx.init(tree["generator"]["params"]), tx.init(tree["discriminator"]))
    data = jnp.asarray(images01 * 2.0 - 1.0)

    def bce(logits, target):
        return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()

    @jax.jit
    def step(state, indices, step_key):
        tree, g_opt, d_opt = state
        real = data[indices]
        z = jax.random.normal(step_key, (batch_size, latent_dim))
        g_params, batch_stats, d_params = tree["generator"]["params"], tree["generator"]["batch_stats"], tree["discriminator"]
        fake, updated = generator.apply({"params": g_params, "batch_stats": batch_stats}, z, train=True,
                                        mutable=["batch_stats"])

        def d_loss_fn(d):
            real_logits = discriminator.apply({"params": d}, real)
            fake_logits = discriminator.apply({"params": d}, jax.lax.stop_gradient(fake))
            return bce(real_logits, 1.0) + bce(fake_logits, 0.0), (real_logits, fake_logits)

        (d_loss, (real_logits, fake_logits)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
        d_updates, d_opt = tx.update(d_grads, d_opt, d_params)
        d_params = optax.apply_updates(d_params, d_updates)

        def g_loss_fn(g):   # non-saturating: fakes labelled real, against the updated D
            images, _ = generator.apply({"params": g, "batch_stats": batch_stats}, z, train=True, mutable=["batch_stats"])
            return bce(discriminator.apply({"params": d_params}, images), 1.0)

        g_loss, g_grads = jax.value_and_grad(g_loss_fn)(g_params)
        g_updates, g_opt = tx.update(g_grads, g_opt, g_params)
        tree = {"generator": {"params": optax.apply_updates(g_params, g_updates), "batch_stats": updated["batch_stats"]},
                "discriminator": d_params}
        metrics = {"d_loss": d_loss, "g_loss": g_loss, "d_real": jax.nn.sigmoid(real_logits).mean(),
                   "d_fake": jax.nn.sigmoid(fake_logits).mean()}
        return (tree, g_opt, d_opt), metrics

    steps_per_epoch = len(images01) // batch_size
    start, summary = time.perf_counter(), {}
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        epoch_key = jax.random.fold_in(key, epoch)
        order = np.asarray(jax.random.permutation(jax.random.fold_in(epoch_key, 0), len(images01)))
        totals: dict[str, Any] = {}
        for index in range(steps_per_epoch):
            batch = order[index * batch_size:(index + 1) * batch_size]
            state, metrics = step(state, batch, jax.random.fold_in(epoch_key, index + 1))
            totals = {k: totals.get(k, 0.0) + v for k, v in metrics.items()}
        summary = {k: float(v) / steps_per_epoch for k, v in totals.items()}
        log(f"epoch {epoch}/{epochs} " + " ".join(f"{k} {v:.4f}" for k, v in summary.items())
            + f" ({time.perf_counter() - epoch_start:.1f}s)")
    metrics = {"epochs": epochs, "steps": epochs * steps_per_epoch, "seconds": time.perf_counter() - start, **summary}
    return jax.tree.map(np.asarray, state[0]), metrics


def sample(generator: Generator, variables: dict, key: jax.Array, count: int, latent_dim: int) -> np.ndarray:
    """count images (count, H, W, C) in [0, 1] from z ~ N(0, 1), generator in eval mode."""
    z = jax.random.normal(key, (count, latent_dim))
    return np.asarray((generator.apply(variables, z) + 1.0) / 2.0)


def _expected_tree(image_shape, width: int, latent_dim: int):
    generator, discriminator = make_gan(image_shape, width=width)
    return generator, jax.eval_shape(lambda k: init_gan(generator, discriminator, k, latent_dim), jax.random.key(0))


def save_gan(path, tree: dict, metadata: dict, *, image_shape, width: int, latent_dim: int, overwrite: bool = False):
    """Saves a trained GAN `tree` (see train_gan); metadata["gan"] records what rebuilds the modules."""
    spec = {"latent_dim": int(latent_dim), "width": int(width), "image_shape": [int(d) for d in image_shape]}
    problems = checkpoints.tree_mismatches(tree, _expected_tree(image_shape, width, latent_dim)[1])
    if problems:
        raise ValueError(f"the GAN tree to save does not match a DCGAN {spec}: {'; '.join(problems[:5])}")
    return checkpoints.save(path, tree, {**metadata, GAN_KEY: spec}, overwrite=overwrite)


def load_gan(path, *, hint: str = GAN_HINT) -> tuple[Generator, dict, dict]:
    """(generator, its variables {params, batch_stats}, metadata) of a checkpoint saved by save_gan.

    CheckpointError when it is missing, corrupt, not a GAN checkpoint, or its tree does not match
    the DCGAN its metadata describes.
    """
    tree, metadata = checkpoints.restore(path, hint=hint)
    spec = metadata.get(GAN_KEY)
    if not isinstance(spec, dict) or not {"latent_dim", "width", "image_shape"} <= spec.keys():
        raise checkpoints.CheckpointError(f"{path} is not a GAN checkpoint (its metadata has no complete {GAN_KEY!r} entry)")
    try:
        generator, expected = _expected_tree(spec["image_shape"], spec["width"], spec["latent_dim"])
    except ValueError as error:
        raise checkpoints.CheckpointError(f"{path} describes a GAN that cannot be built: {error}") from error
    problems = checkpoints.tree_mismatches(tree, expected)
    if problems:
        raise checkpoints.CheckpointError(f"checkpoint {path} does not match the DCGAN {spec}: {'; '.join(problems[:5])}")
    return generator, tree["generator"], metadata
