"""Training jobs behind the CLI: train a victim, the AE prior, the GAN prior, the LTI inverter.

Each job takes an `ml_collections.ConfigDict` (see experiments/configs/) and a work directory,
prints progress, and writes its outputs there:

- train_victim: WORKDIR/victim/ (orbax checkpoint + metadata.json)
- train_ae:     WORKDIR/ae/     (orbax checkpoint + metadata.json)
- train_gan:    WORKDIR/gan/    (orbax checkpoint + metadata.json), WORKDIR/gan_samples.png
- train_inverter: WORKDIR/inverter/ (orbax checkpoint + metadata.json): Learning to Invert's network;
                  WORKDIR/inverter_progress/ while it trains (a rerun resumes from it)

Attacks are studies (`study.py`): the `attack` command runs a study's attacks one per device.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections
import numpy as np

from gipip_jax import assembly, checkpoints, data, results, training
from gipip_jax.victims import make_victim


def output_path(config: ml_collections.ConfigDict, workdir: str, name: str) -> str:
    """WORKDIR/NAME, checked before any training: an existing checkpoint there is kept unless
    config.overwrite, and saying so after hours of training would waste them."""
    path = os.path.join(workdir, name)
    if os.path.exists(path) and not config.get("overwrite", False):
        raise FileExistsError(f"checkpoint {os.path.abspath(path)} already exists; use another --workdir, "
                              f"or --set overwrite=True to replace it")
    return path


def train_victim(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains a victim for config.epochs on real data; saves WORKDIR/victim. Returns its metadata."""
    path = output_path(config, workdir, "victim")
    train_set = assembly.load_dataset(config.data, "train")
    test_set = assembly.load_dataset(config.data, config.data.test_split)
    info = train_set.info
    victim = make_victim(config.victim.name, info.num_classes, info.image_shape, conv="native")
    count = config.get("train_count") or len(train_set.labels)
    x, y = train_set.take(np.arange(count))
    x_test, y_test = test_set.take(np.arange(min(config.eval_count, len(test_set.labels))))
    print(f"training {victim.name} on {count} {info.name} images for {config.epochs} epoch(s)")
    variables, stats = training.train_victim(
        victim, x, y, info=info, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, seed=config.seed, eval_images01=x_test, eval_labels=y_test)
    metadata = {"dataset": info.name, "train_count": int(count), "seed": config.seed, "epochs": config.epochs,
                "batch_size": config.batch_size, "learning_rate": config.learning_rate, **stats,
                "config": config.to_dict()}
    checkpoints.save_victim(path, victim, variables, metadata, overwrite=config.get("overwrite", False))
    print(f"saved {path}: {json.dumps(stats)}")
    return metadata


def train_ae(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains GI-PIP's AE prior on an auxiliary subset; saves WORKDIR/ae. Returns its metadata."""
    path = output_path(config, workdir, "ae")
    data.check_auxiliary_request(config.aux.get("fraction"), config.aux.get("count"))
    training.check_recipe(config.recipe)
    pool = assembly.load_dataset(config.data, config.data.split)
    n = len(pool.labels)
    aux, heldout = data.auxiliary_split(n, fraction=config.aux.get("fraction"), count=config.aux.get("count"),
                                        seed=config.aux.seed, heldout_count=config.heldout_count)
    x_aux, _ = pool.take(aux)
    x_heldout, _ = pool.take(heldout)
    print(f"training the AE prior on {len(aux)} {pool.info.name} {config.data.split} images "
          f"({100 * len(aux) / n:.2f} % of {n}), {len(heldout)} held out, recipe {config.recipe}")
    params, stats = training.train_autoencoder(
        x_aux, recipe=config.recipe, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.get("learning_rate"), seed=config.seed, heldout01=x_heldout,
        target_heldout_mse=config.get("target_heldout_mse"))
    metadata = {"dataset": pool.info.name, "split": config.data.split, "image_shape": list(pool.info.image_shape),
                "aux_count": len(aux), "aux_fraction": len(aux) / n, "aux_seed": config.aux.seed,
                "heldout_count": len(heldout), "recipe": config.recipe,
                "batch_size": config.batch_size, "seed": config.seed,
                "as_offset": assembly.reference_as_offset(pool.info.image_shape[0]), **stats, "config": config.to_dict()}
    checkpoints.save_autoencoder(path, params, metadata, overwrite=config.get("overwrite", False))
    print(f"saved {path}: {json.dumps(stats)}")
    return metadata


def train_gan(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the GAN prior (a DCGAN) on the same kind of auxiliary subset as the AE; saves
    WORKDIR/gan (orbax checkpoint + metadata.json) and WORKDIR/gan_samples.png. Returns its metadata."""
    path = output_path(config, workdir, "gan")
    from gipip_jax import gan

    data.check_auxiliary_request(config.aux.get("fraction"), config.aux.get("count"))
    pool = assembly.load_dataset(config.data, config.data.split)
    n = len(pool.labels)
    aux, _ = data.auxiliary_split(n, fraction=config.aux.get("fraction"), count=config.aux.get("count"),
                                  seed=config.aux.seed, heldout_count=config.heldout_count)   # the AE's images
    x_aux, _ = pool.take(aux)
    print(f"training the GAN prior (DCGAN, width {config.width}) on {len(aux)} {pool.info.name} {config.data.split} "
          f"images ({100 * len(aux) / n:.2f} % of {n}) for {config.epochs} epoch(s)")
    tree, stats = gan.train_gan(x_aux, epochs=config.epochs, latent_dim=config.latent_dim, width=config.width,
                                batch_size=config.batch_size, learning_rate=config.learning_rate, b1=config.b1,
                                seed=config.seed)
    metadata = {"dataset": pool.info.name, "split": config.data.split, "image_shape": list(pool.info.image_shape),
                "aux_count": len(aux), "aux_fraction": len(aux) / n, "aux_seed": config.aux.seed,
                "batch_size": config.batch_size, "seed": config.seed, **stats, "config": config.to_dict()}
    gan.save_gan(path, tree, metadata, image_shape=pool.info.image_shape, width=config.width,
                 latent_dim=config.latent_dim, overwrite=config.get("overwrite", False))
    generator, _ = gan.make_gan(pool.info.image_shape, width=config.width)
    samples = gan.sample(generator, tree["generator"], jax.random.key(config.seed + 1), 32, config.latent_dim)
    k = min(16, len(x_aux))
    results.save_grid(os.path.join(workdir, "gan_samples.png"), [samples[:k], samples[16:16 + k], x_aux[:k]])
    print(f"saved {path} and {os.path.join(workdir, 'gan_samples.png')} (two rows of samples, then real "
          f"auxiliary images): {json.dumps(stats)}")
    return metadata


def train_inverter(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains Learning to Invert's network (inverter.py) for config.victim, config.threat and the
    defense config.defense (flat DEFENSE_DEFAULTS fields) on an auxiliary split of config.data,
    selected on held-out auxiliary images; saves WORKDIR/inverter. Returns its metadata."""
    path = output_path(config, workdir, "inverter")
    from gipip_jax import defenses, inverter, threat_models

    data.check_auxiliary_request(config.aux.get("fraction"), config.aux.get("count"))
    threat = threat_models.check_threat_config(dict(config.get("threat") or {}))
    defense = dict(config.get("defense") or {})
    defenses.parse(defense)   # bad fields: one error before any data is decoded
    defense = {**defenses.DEFENSE_DEFAULTS, **defense}
    pool = assembly.load_dataset(config.data, config.data.split)
    info, n = pool.info, len(pool.labels)
    aux, heldout = data.auxiliary_split(n, fraction=config.aux.get("fraction"), count=config.aux.get("count"),
                                        seed=config.aux.seed, heldout_count=config.heldout_count)
    victim, variables, victim_meta = assembly.victim_and_variables(config, info)
    x_aux, y_aux = pool.take(aux)
    x_heldout, y_heldout = pool.take(heldout)
    changed = {k: v for k, v in defense.items() if v != defenses.DEFENSE_DEFAULTS[k]}
    print(f"training the LTI inverter for {victim.name} ({threat['kind']}, client batch {config.client_batch_size}) "
          f"on {len(aux)} {info.name} {config.data.split} images ({100 * len(aux) / n:.2f} % of {n}), "
          f"{len(heldout)} held out; defense {changed or 'none'}")
    pairs_victim = make_victim(victim.name, info.num_classes, info.image_shape, conv="auto")
    progress = os.path.join(workdir, "inverter_progress")   # the resume state while training runs
    tree, spec, stats = inverter.train(
        pairs_victim, variables, x_aux, y_aux, x_heldout, y_heldout, normalize=info.normalize,
        client_batch=config.client_batch_size, defense_fields=defense, threat=threat, hidden=config.hidden,
        num_bins=config.num_bins, hash_seed=config.hash_seed, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.learning_rate, decay_at=config.decay_at, eval_every=config.eval_every, seed=config.seed,
        progress=progress)
    metadata = {"dataset": info.name, "split": config.data.split, "image_shape": list(info.image_shape),
                "pool_count": n, "aux": {"fraction": config.aux.get("fraction"), "count": config.aux.get("count"),
                                         "seed": config.aux.seed},
                "aux_count": len(aux), "aux_fraction": len(aux) / n, "heldout_count": len(heldout),
                "victim": {"name": victim.name, **victim_meta}, "victim_identity": assembly.victim_identity(config),
                "threat": threat, "defense": defense, "client_batch_size": config.client_batch_size,
                "batch_size": config.batch_size, "learning_rate": config.learning_rate, "decay_at": config.decay_at,
                "hash_seed": config.hash_seed, "seed": config.seed, **stats, "config": config.to_dict()}
    inverter.save(path, tree, spec, metadata, overwrite=config.get("overwrite", False))
    shutil.rmtree(progress, ignore_errors=True)
    print(f"saved {path}: {json.dumps(stats)}")
    return metadata
