"""What an attack optimizes: a *parameterization* of the candidate images.

A parameterization maps a pytree of parameters to candidate images in the victim's normalized
space, so one attack loop (`attack.make_attack`, the batched `engine.Engine`) serves:

- "pixels": the images themselves (GI-PIP, Inverting Gradients): init x ~ N(0, 1) (or a start
  computed from the target update: `from_update`, e.g. Learning to Invert's), render the identity,
  box projection onto [normalize(0), normalize(1)] after every step;
- "gan":    GIAS's GAN prior: params {"latent": z (B, Z), "generator": a pretrained generator's
  weights}; render = normalize((G(z) + 1) / 2); phase 1 moves z, phase 2 the generator's weights
  (`make_gan_optimizer`);
- "dip":    a deep image prior: params {"net": an untrained U-Net's weights, "noise": its fixed
  input}; render = normalize(sigmoid(U-Net(noise))); only the weights move (`make_dip_optimizer`);
- "dlg":    DLG / iDLG: params {"x": images, no box} plus {"label_logits": (B, K)} when the labels
  are learned jointly (the objective then sees softmax(label_logits) as the labels).

Shape of the code: `Parameterization(init, render, project)` of pure functions, as optax's
transformations; the optimizer that goes with a parameterization is a plain optax
`GradientTransformation` over its params tree (`optax.multi_transform` by parameter group).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
PARAMETERIZATIONS = ("pixels", "gan", "dip", "dlg")


class Parameterization(NamedTuple):
    """init(key, shape) -> params, for images of shape (B, H, W, C);
    render(params) -> x (B, H, W, C) in the victim's normalized space;
    project(params) -> params after every optimizer step (the box projection for pixels);
    labels(params, given) -> the labels the objective sees: the given ones (int (B,) or soft (B, K)),
    or learned ones (soft (B, K)) when the params hold them;
    from_update(key, shape, update) -> params, when set used instead of init: a start computed from
    the attack's target update tree (e.g. a Learning-to-Invert network's output)."""

    name: str
    init: Callable[[jax.Array, tuple], PyTree]
    render: Callable[[PyTree], jax.Array]
    project: Callable[[PyTree], PyTree]
    labels: Callable[[PyTree, jax.Array], jax.Array] = lambda params, given: given
    from_update: Callable[[jax.Array, tuple, PyTree], PyTree] | None = None


def pixels(bounds: tuple, start: Callable[[PyTree], jax.Array] | None = None, flat: bool = False) -> Parameterization:
    """The images themselves: x ~ N(0, 1), kept in the box bounds = (lo, hi), each (C,).
    start(update) -> (B, H, W, C) normalized images: the attack starts there instead (in the box).
    flat: every attack starts at x = 0, the normalization's mean colour (a flat image; breaching's "zeros")."""
    lo, hi = (jnp.asarray(b, jnp.float32) for b in bounds)
    project = lambda x: optax.projections.projection_box(x, lo, hi)  # noqa: E731
    from_update = None if start is None else (lambda key, shape, update: project(start(update).astype(jnp.float32)))
    return Parameterization(
        "pixels",
        (lambda key, shape: jnp.zeros(shape, jnp.float32)) if flat else
        (lambda key, shape: jax.random.normal(key, shape, jnp.float32)),
        lambda x: x,
        project,
        from_update=from_update)


def gan(generator, variables: dict, latent_dim: int, normalize: Callable[[jax.Array], jax.Array]) -> Parameterization:
    """GIAS's parameterization: images normalize((G(z) + 1) / 2) of a pretrained generator.

    generator: a Linen module mapping z (B, latent_dim) to images (B, H, W, C) in [-1, 1] (tanh),
    run in eval mode (BN with the running statistics of its training, kept fixed); variables: its
    {"params", "batch_stats"}. Every attack starts from its own z ~ N(0, 1) and its own copy of the
    pretrained "params", which phase 2 of the attack adapts.
    """
    fixed = {k: v for k, v in variables.items() if k != "params"}

    def init(key, shape):
        return {"latent": jax.random.normal(key, (shape[0], latent_dim), jnp.float32),
                "generator": jax.tree.map(jnp.asarray, variables["params"])}

    def render(params):
        images = generator.apply({"params": params["generator"], **fixed}, params["latent"])
        return normalize((images + 1.0) / 2.0)

    return Parameterization("gan", init, render, lambda p: p)


def dip(net, normalize: Callable[[jax.Array], jax.Array], *, noise_channels: int = 32,
        noise_std: float = 0.1) -> Parameterization:
    """Deep image prior: images normalize(sigmoid(net(noise))) of an untrained net.

    net: a Linen module mapping (B, H, W, noise_channels) to logits (B, H, W, C); both its weights
    and the noise ~ N(0, noise_std^2) are drawn from the attack's key, so every attack (and
    restart) has its own. The noise is a parameter the optimizer leaves alone (`make_dip_optimizer`).
    """

    def init(key, shape):
        net_key, noise_key = jax.random.split(key)
        noise = noise_std * jax.random.normal(noise_key, (*shape[:3], noise_channels), jnp.float32)
        return {"net": net.init(net_key, noise)["params"], "noise": noise}

    def render(params):
        return normalize(jax.nn.sigmoid(net.apply({"params": params["net"]}, params["noise"])))

    return Parameterization("dip", init, render, lambda p: p)


def dlg(num_classes: int, *, learn_labels: bool) -> Parameterization:
    """DLG's dummy data: x ~ N(0, 1) (B, H, W, C) in the victim's input space with no box, and, when
    `learn_labels`, label logits ~ N(0, 1) (B, num_classes) whose softmax is the label (iDLG: the
    labels are given, read off the update, and only x moves)."""

    def init(key, shape):
        key_x, key_y = jax.random.split(key)
        params = {"x": jax.random.normal(key_x, shape, jnp.float32)}
        if learn_labels:
            params["label_logits"] = jax.random.normal(key_y, (shape[0], num_classes), jnp.float32)
        return params

    def labels(params, given):
        return jax.nn.softmax(params["label_logits"], axis=-1) if learn_labels else given

    return Parameterization("dlg", init, lambda p: p["x"], lambda p: p, labels)


def phase(inner: optax.GradientTransformation, start: int, stop: int) -> optax.GradientTransformation:
    """`inner` applied only on steps start <= t < stop (t counts this transformation's updates);
    outside them the update is zero and `inner`'s state (Adam moments, its own step count) is
    frozen, so `inner` starts fresh at `start`, as a new optimizer would. start/stop may be traced."""

    def init(params):
        return inner.init(params), jnp.zeros((), jnp.int32)

    def update(updates, state, params=None):
        inner_state, count = state
        new_updates, new_inner = inner.update(updates, inner_state, params)
        active = (count >= start) & (count < stop)
        new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_inner, inner_state)
        return new_updates, (new_inner, count + 1)

    return optax.GradientTransformation(init, update)


def make_gan_optimizer(latent_lr: float, generator_lr: float, latent_iterations: int,
                       generator_iterations: int, *, schedule: Callable[[float, int], optax.Schedule]
                       ) -> optax.GradientTransformation:
    """GIAS's two phases as one optimizer over {"latent", "generator"}: Adam(latent_lr) on z for the
    first `latent_iterations` steps, then Adam(generator_lr) on the generator's weights for the next
    `generator_iterations` (z fixed); each phase has its own `schedule(lr, phase length)`."""
    latent = phase(optax.adam(schedule(latent_lr, max(latent_iterations, 1))), 0, latent_iterations)
    weights = phase(optax.adam(schedule(generator_lr, max(generator_iterations, 1))), latent_iterations,
                    latent_iterations + generator_iterations)
    return optax.multi_transform({"latent": latent, "generator": weights},
                                 lambda params: {k: k for k in params})


def make_dip_optimizer(learning_rate: float, iterations: int, *, schedule: Callable[[float, int], optax.Schedule]
                       ) -> optax.GradientTransformation:
    """Adam(schedule(learning_rate, iterations)) on the U-Net's weights; the noise input stays fixed."""
    return optax.multi_transform({"net": optax.adam(schedule(learning_rate, iterations)), "noise": optax.set_to_zero()},
                                 lambda params: {k: k for k in params})
