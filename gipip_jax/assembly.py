"""Assembly: a config -> the objects a command runs on, in one place.

dataset (`load_dataset`), the client's victim and its variables (`victim_and_variables`), the AE
prior (`prior`) and the images it was trained on (`prior_auxiliary_indices`), what an attack
optimizes and how (`optimization`), paths (`resolve_path`) and the config fingerprint that makes
resuming safe. Every command (attack, study, utility, the training jobs, experiments, report)
builds through these; the attacked victim's convolution follows the engine's strategy (engine.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import optax

from gipip_jax import checkpoints, data, parameterizations, threat_models
from gipip_jax import dip as dip_lib
from gipip_jax import gan as gan_lib
from gipip_jax import inverter as inverter_lib
from gipip_jax.attack import OPTIMIZERS, make_lbfgs, make_optimizer, step_decay_schedule
from gipip_jax.victims import make_victim

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# GI-PIP's AS offsets c by image side (the authors' values): 32 px, 64 px, 224 px.
REFERENCE_AS_OFFSETS = {32: 0.001, 64: 0.002, 224: 0.005}
# attack.init of pixel attacks: x ~ N(0, 1), a flat image of the normalization's mean colour (x = 0), or the
# output of the Learning-to-Invert network inverter.checkpoint
ATTACK_INITS = ("random", "flat", "inverter")


def resolve_path(path: str) -> str:
    """A relative path is taken from the current directory, else from the repository root."""
    if os.path.isabs(path) or os.path.exists(path) or not (REPO_ROOT / path).exists():
        return path
    return str(REPO_ROOT / path)


def load_dataset(cfg: ml_collections.ConfigDict, split: str) -> data.ImageSet:
    return data.load(cfg.name, split, data_dir=cfg.get("data_dir"), cache_dir=cfg.get("cache_dir"),
                     image_size=cfg.get("image_size"))


def reference_as_offset(side: int) -> float:
    """The authors' c for the nearest of their image sizes."""
    return REFERENCE_AS_OFFSETS[min(REFERENCE_AS_OFFSETS, key=lambda s: abs(s - side))]


def victim_and_variables(config: ml_collections.ConfigDict, info: data.DatasetInfo):
    """(victim, variables, metadata): config.victim's checkpoint, else a fresh `victim.name` with
    `victim.init` (flax | torch) from `victim.init_seed`; the client's own model (native convs)."""
    if config.victim.get("checkpoint"):
        victim, variables, meta = checkpoints.load_victim(resolve_path(config.victim.checkpoint))
        if tuple(victim.image_shape) != tuple(info.image_shape) or victim.num_classes != info.num_classes:
            raise ValueError(f"the victim checkpoint is for images {victim.image_shape} with {victim.num_classes} "
                             f"classes; {info.name} has {info.image_shape} and {info.num_classes}")
        return victim, variables, {"checkpoint": config.victim.checkpoint, "epochs": meta.get("epochs")}
    init = config.victim.get("init", "flax")
    victim = make_victim(config.victim.name, info.num_classes, info.image_shape, init=init, conv="native")
    return victim, victim.init(jax.random.key(config.victim.init_seed)), {"epochs": 0, "init_seed": config.victim.init_seed,
                                                                          "init": init}


def victim_identity(config: ml_collections.ConfigDict) -> dict:
    """What fixes the attacked weights: the victim checkpoint's absolute path, else name, init and init seed."""
    v = config.victim
    if v.get("checkpoint"):
        return {"checkpoint": os.path.abspath(resolve_path(v.checkpoint))}
    return {"name": v.name, "init": v.get("init", "flax"), "init_seed": int(v.init_seed)}


def inverter(config: ml_collections.ConfigDict, info: data.DatasetInfo):
    """(Inverter, record metadata) of inverter.checkpoint, checked against the study: the same
    victim weights, threat model and client batch shape (targets.batch_size, *image shape)."""
    path = (config.get("inverter") or {}).get("checkpoint")
    if not path:
        raise ValueError("attack.init='inverter' needs inverter.checkpoint (made by `gipip-jax train-inverter`)")
    inv = inverter_lib.load(resolve_path(path))
    meta = inv.metadata
    shape = (int(config.targets.batch_size), *info.image_shape)
    if tuple(inv.spec.out_shape) != shape:
        raise ValueError(f"the inverter {path} makes client batches of shape {inv.spec.out_shape}; this study's are "
                         f"{shape} (targets.batch_size, H, W, C): train one for them (gipip-jax train-inverter)")
    if meta.get("victim_identity") != victim_identity(config):
        raise ValueError(f"the inverter {path} was trained on the victim {meta.get('victim_identity')}; this study "
                         f"attacks {victim_identity(config)}")
    threat = threat_models.check_threat_config(dict(config.get("threat") or {}))
    if meta.get("threat") != threat:
        raise ValueError(f"the inverter {path} was trained for the threat model {meta.get('threat')}; this study's "
                         f"is {threat}")
    keep = ("dataset", "aux_count", "aux_fraction", "defense", "epochs", "best_epoch", "heldout_mse", "heldout_psnr",
            "baseline_mse", "client_batch_size")
    return inv, {"checkpoint": path, **{k: meta.get(k) for k in keep}, "model": inv.spec.to_json()}


def prior(config: ml_collections.ConfigDict):
    """(reconstruct fn or None, AS offset, metadata) of the configured AE prior: loaded when some
    setting of the grid has grid.as_weight > 0."""
    if max(config.grid.get("as_weight") or [0.0]) <= 0:
        return None, 0.0, None
    module, params, meta = checkpoints.load_autoencoder(resolve_path(config.prior.checkpoint))
    offset = config.prior.get("offset")
    offset = meta["as_offset"] if offset is None else offset
    return (lambda x01: module.apply({"params": params}, x01)), float(offset), meta


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
    """16 hex digits of the config's JSON: records and plans of another config are not reused."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


class Optimization(NamedTuple):
    """What the attacks optimize and how: parameterization (None: the pixels in the box), optimizer,
    line_search (the optimizer evaluates the objective itself: L-BFGS), GAN checkpoint metadata or None."""

    parameterization: parameterizations.Parameterization | None
    optimizer: optax.GradientTransformation
    line_search: bool = False
    gan_meta: dict | None = None
    inverter_meta: dict | None = None


def optimization(config: ml_collections.ConfigDict, info: data.DatasetInfo) -> Optimization:
    """The Optimization of config.attack: optimizer "lbfgs" is DLG / iDLG (optax L-BFGS over the
    "dlg" parameterization: no box, labels learned when attack.labels == "dlg"); optimizer "adam"
    (default) over attack.parameterization: "pixels" (default; attack.learning_rate, attack.signed),
    "gan" (config.gan: checkpoint, latent_iterations (None: half of attack.iterations), latent_lr,
    generator_lr) or "dip" (config.dip: widths, learning_rate, noise_channels, noise_std). Every
    Adam phase uses the reference step schedule (x0.1 at 3/8, 5/8, 7/8 of its iterations).
    attack.init "inverter" (pixels only): every attack starts at the Learning-to-Invert network
    inverter.checkpoint's reconstruction from its target update (attack.iterations 0: LTI alone);
    "flat" (pixels only): at a flat image of the normalization's mean colour, the same for every key."""
    a = config.attack
    name, labels = a.get("optimizer", "adam"), a.get("labels", "given")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown attack.optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    start = a.get("init", "random")
    if start not in ATTACK_INITS:
        raise ValueError(f"unknown attack.init {start!r}; choose one of {', '.join(ATTACK_INITS)}")
    if start != "random" and (name != "adam" or a.get("parameterization", "pixels") != "pixels"):
        raise ValueError(f"attack.init={start!r} starts the pixels: it needs attack.optimizer='adam' and "
                         "attack.parameterization='pixels'")
    if labels == "dlg" and name != "lbfgs":
        raise ValueError("attack.labels='dlg' (soft labels learned jointly) needs attack.optimizer='lbfgs'")
    if name == "lbfgs":
        return Optimization(parameterizations.dlg(info.num_classes, learn_labels=labels == "dlg"), make_lbfgs(),
                            line_search=True)
    kind = a.get("parameterization", "pixels")
    if kind not in parameterizations.PARAMETERIZATIONS or kind == "dlg":
        choices = ", ".join(k for k in parameterizations.PARAMETERIZATIONS if k != "dlg")
        raise ValueError(f"unknown attack.parameterization {kind!r} for attack.optimizer 'adam'; choose one of {choices}")
    if kind == "pixels" and start == "inverter":
        inv, meta = inverter(config, info)
        p = parameterizations.pixels(info.bounds(), start=lambda update: info.normalize(inv.images01(update)))
        return Optimization(p, make_optimizer(a.learning_rate, a.iterations, signed=a.signed), inverter_meta=meta)
    if kind == "pixels":
        p = parameterizations.pixels(info.bounds(), flat=True) if start == "flat" else None
        return Optimization(p, make_optimizer(a.learning_rate, a.iterations, signed=a.signed))
    if kind == "gan":
        g = config.get("gan")
        if g is None or not g.get("checkpoint"):
            raise ValueError("attack.parameterization='gan' needs gan.checkpoint (made by `gipip-jax train-gan`)")
        generator, variables, meta = gan_lib.load_gan(resolve_path(g.checkpoint))
        if tuple(meta["gan"]["image_shape"]) != tuple(info.image_shape):
            raise ValueError(f"the GAN checkpoint {g.checkpoint} makes images of shape {tuple(meta['gan']['image_shape'])}; "
                             f"{info.name} has {tuple(info.image_shape)}: train one on this data (gipip-jax train-gan)")
        latent = a.iterations // 2 if g.get("latent_iterations") is None else int(g.latent_iterations)
        if not 0 <= latent <= a.iterations:
            raise ValueError(f"gan.latent_iterations must be in [0, attack.iterations = {a.iterations}], got {latent}")
        optimizer = parameterizations.make_gan_optimizer(g.latent_lr, g.generator_lr, latent, a.iterations - latent,
                                                         schedule=step_decay_schedule)
        p = parameterizations.gan(generator, variables, meta["gan"]["latent_dim"], info.normalize)
        return Optimization(p, optimizer, gan_meta={"checkpoint": g.checkpoint, "latent_iterations": latent,
                                                    **{k: meta.get(k) for k in ("dataset", "aux_count", "aux_fraction", "epochs")}})
    d = config.get("dip")
    if d is None:
        raise ValueError("attack.parameterization='dip' needs a config.dip block (widths, learning_rate, ...)")
    side = min(info.image_shape[:2])
    if side % 2 ** len(d.widths):
        raise ValueError(f"dip.widths has {len(d.widths)} levels, so images need H and W divisible by "
                         f"{2 ** len(d.widths)}; {info.name} has {tuple(info.image_shape)}")
    net = dip_lib.make_unet(d.widths, info.image_shape[-1])
    p = parameterizations.dip(net, info.normalize, noise_channels=d.noise_channels, noise_std=d.noise_std)
    return Optimization(p, parameterizations.make_dip_optimizer(d.learning_rate, a.iterations, schedule=step_decay_schedule))


def prior_auxiliary_indices(config: ml_collections.ConfigDict, num_examples: int) -> np.ndarray:
    """Indices of the split that the configured AE prior was trained on (empty when it was trained on
    another dataset or split, or no prior is configured), and those the inverter was trained and
    selected on when attack.init is "inverter": targets must not be among them."""
    indices = _ae_auxiliary_indices(config, num_examples)
    if config.attack.get("init", "random") == "inverter" and (config.get("inverter") or {}).get("checkpoint"):
        indices = np.union1d(indices, _inverter_auxiliary_indices(config, num_examples))
    return indices


def _checkpoint_metadata(path: str) -> dict:
    """The metadata.json of checkpoint `path` ({} when it has none)."""
    metadata_path = os.path.join(resolve_path(path), checkpoints.METADATA_FILE)
    if not os.path.exists(metadata_path):
        return {}
    with open(metadata_path) as f:
        return json.load(f)


def _inverter_auxiliary_indices(config: ml_collections.ConfigDict, num_examples: int) -> np.ndarray:
    meta = _checkpoint_metadata(config.inverter.checkpoint)
    if not meta or (meta.get("dataset"), meta.get("split"), meta.get("pool_count")) != \
            (config.data.name, config.data.split, num_examples):
        return np.zeros(0, np.int64)
    aux, heldout = data.auxiliary_split(num_examples, fraction=meta["aux"]["fraction"], count=meta["aux"]["count"],
                                        seed=int(meta["aux"]["seed"]), heldout_count=int(meta["heldout_count"]))
    return np.union1d(aux, heldout)


def _ae_auxiliary_indices(config: ml_collections.ConfigDict, num_examples: int) -> np.ndarray:
    path = config.get("prior", {}).get("checkpoint")
    meta = _checkpoint_metadata(path) if path else {}
    if not meta or meta.get("dataset") != config.data.name or meta.get("split") != config.data.split:
        return np.zeros(0, np.int64)
    return data.auxiliary_indices(num_examples, count=int(meta["aux_count"]), seed=int(meta["aux_seed"]))
