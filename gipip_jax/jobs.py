"""End-to-end jobs behind the CLI: train a victim, train the AE prior, run attacks.

Each job takes an `ml_collections.ConfigDict` (see experiments/configs/) and a work directory,
prints progress, and writes its outputs there:

- train_victim: WORKDIR/victim/ (orbax checkpoint + metadata.json)
- train_ae:     WORKDIR/ae/     (orbax checkpoint + metadata.json)
- train_gan:    WORKDIR/gan/    (orbax checkpoint + metadata.json), WORKDIR/gan_samples.png
- attack:       WORKDIR/results.jsonl (one record per attack), WORKDIR/grid.png (ground truth
                above reconstruction), WORKDIR/reconstructions.npz

The attack job only hands the attacker the client's `SharedUpdate`, the labels (given, as in
GI-PIP's setting, or recovered from the update: config.attack.labels, see `labels.py`; "dlg"
learns soft labels jointly with the image) and the model; ground-truth images and labels are
used for metrics (PSNR/SSIM/LPIPS, label accuracy) only. config.attack.optimizer "adam" runs
`attack.make_inverter`, "lbfgs" runs DLG/iDLG's L-BFGS (`dlg.make_dlg_inverter`). Records carry a
fingerprint of the config: rerunning the same command skips targets already in results.jsonl.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gipip_jax import attack as attack_lib
from gipip_jax import assembly, checkpoints, data, dlg, metrics, results, training
from gipip_jax import labels as label_lib
from gipip_jax.client import check_update_matches, fedsgd_update
from gipip_jax.objectives import ObjectiveWeights, make_objective
from gipip_jax.victims import make_victim

OPTIMIZERS = ("adam", "lbfgs")
LABEL_SOURCES = ("given", "dlg", *label_lib.STRATEGIES)


def train_victim(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains a victim for config.epochs on real data; saves WORKDIR/victim. Returns its metadata."""
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
    path = os.path.join(workdir, "victim")
    checkpoints.save_victim(path, victim, variables, metadata, overwrite=config.get("overwrite", False))
    print(f"saved {path}: {json.dumps(stats)}")
    return metadata


def train_ae(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains GI-PIP's AE prior on an auxiliary subset; saves WORKDIR/ae. Returns its metadata."""
    data.check_auxiliary_request(config.aux.get("fraction"), config.aux.get("count"))
    training.check_recipe(config.recipe)
    pool = assembly.load_dataset(config.data, config.data.split)
    n = len(pool.labels)
    aux = data.auxiliary_indices(n, fraction=config.aux.get("fraction"), count=config.aux.get("count"),
                                 seed=config.aux.seed)
    heldout = data.auxiliary_indices(n, exclude=aux, count=config.heldout_count, seed=config.aux.seed + 1)
    x_aux, _ = pool.take(aux)
    x_heldout, _ = pool.take(heldout)
    print(f"training the AE prior on {len(aux)} {pool.info.name} {config.data.split} images "
          f"({100 * len(aux) / n:.2f} % of {n}), {len(heldout)} held out, recipe {config.recipe}")
    params, stats = training.train_autoencoder(
        x_aux, recipe=config.recipe, epochs=config.epochs, batch_size=config.batch_size,
        learning_rate=config.get("learning_rate"), seed=config.seed, heldout01=x_heldout)
    metadata = {"dataset": pool.info.name, "split": config.data.split, "image_shape": list(pool.info.image_shape),
                "aux_count": len(aux), "aux_fraction": len(aux) / n, "aux_seed": config.aux.seed,
                "heldout_count": len(heldout), "recipe": config.recipe, "epochs": config.epochs,
                "batch_size": config.batch_size, "seed": config.seed,
                "as_offset": assembly.reference_as_offset(pool.info.image_shape[0]), **stats, "config": config.to_dict()}
    path = os.path.join(workdir, "ae")
    checkpoints.save_autoencoder(path, params, metadata, overwrite=config.get("overwrite", False))
    print(f"saved {path}: {json.dumps(stats)}")
    return metadata


def train_gan(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains the GAN prior (a DCGAN) on the same kind of auxiliary subset as the AE; saves
    WORKDIR/gan (orbax checkpoint + metadata.json) and WORKDIR/gan_samples.png. Returns its metadata."""
    from gipip_jax import gan

    data.check_auxiliary_request(config.aux.get("fraction"), config.aux.get("count"))
    pool = assembly.load_dataset(config.data, config.data.split)
    n = len(pool.labels)
    aux = data.auxiliary_indices(n, fraction=config.aux.get("fraction"), count=config.aux.get("count"),
                                 seed=config.aux.seed)
    x_aux, _ = pool.take(aux)
    print(f"training the GAN prior (DCGAN, width {config.width}) on {len(aux)} {pool.info.name} {config.data.split} "
          f"images ({100 * len(aux) / n:.2f} % of {n}) for {config.epochs} epoch(s)")
    tree, stats = gan.train_gan(x_aux, epochs=config.epochs, latent_dim=config.latent_dim, width=config.width,
                                batch_size=config.batch_size, learning_rate=config.learning_rate, b1=config.b1,
                                seed=config.seed)
    metadata = {"dataset": pool.info.name, "split": config.data.split, "image_shape": list(pool.info.image_shape),
                "aux_count": len(aux), "aux_fraction": len(aux) / n, "aux_seed": config.aux.seed,
                "batch_size": config.batch_size, "seed": config.seed, **stats, "config": config.to_dict()}
    path = os.path.join(workdir, "gan")
    gan.save_gan(path, tree, metadata, image_shape=pool.info.image_shape, width=config.width,
                 latent_dim=config.latent_dim, overwrite=config.get("overwrite", False))
    generator, _ = gan.make_gan(pool.info.image_shape, width=config.width)
    samples = gan.sample(generator, tree["generator"], jax.random.key(config.seed + 1), 32, config.latent_dim)
    k = min(16, len(x_aux))
    results.save_grid(os.path.join(workdir, "gan_samples.png"), [samples[:k], samples[16:16 + k], x_aux[:k]])
    print(f"saved {path} and {os.path.join(workdir, 'gan_samples.png')} (two rows of samples, then real "
          f"auxiliary images): {json.dumps(stats)}")
    return metadata


def attack(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Attacks every configured target batch; appends a record per attack. Returns this run's records."""
    os.makedirs(workdir, exist_ok=True)
    target_set = assembly.load_dataset(config.data, config.data.split)
    info = target_set.info
    victim, variables, victim_meta = assembly.victim_and_variables(config, info)
    reconstruct, offset, prior_meta = assembly.prior(config)
    a = config.attack
    optimizer_name, label_source = a.get("optimizer", "adam"), a.get("labels", "given")
    if optimizer_name not in OPTIMIZERS:
        raise ValueError(f"unknown attack.optimizer {optimizer_name!r}; choose one of {OPTIMIZERS}")
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"unknown attack.labels {label_source!r}; choose one of {LABEL_SOURCES}")
    if label_source == "dlg" and optimizer_name != "lbfgs":
        raise ValueError("attack.labels='dlg' (soft labels learned jointly) needs attack.optimizer='lbfgs'")
    if label_source == "idlg" and config.targets.batch_size != 1:
        raise ValueError(f"attack.labels='idlg' reads the label of a single image; targets.batch_size is "
                         f"{config.targets.batch_size} (use yin, llg or bias_count)")
    # The attacker's copy of the victim: same variables, convolutions chosen for the double backward.
    attacked = make_victim(victim.name, info.num_classes, info.image_shape, conv=assembly.attack_conv(a.get("conv", "auto")))
    objective = make_objective(
        attacked, variables, info, matching=a.matching, reconstruct=reconstruct,
        weights=ObjectiveWeights(tv=a.tv_weight, anomaly=a.as_weight, anomaly_offset=offset,
                                 bn_stats=a.get("bn_weight", 0.0)))
    if optimizer_name == "lbfgs":
        invert = dlg.make_dlg_inverter(objective, info.denormalize, num_classes=info.num_classes,
                                       learn_labels=label_source == "dlg", iterations=a.iterations,
                                       restarts=a.restarts, chunk_size=a.chunk_size)
    else:
        optimizer = attack_lib.make_optimizer(a.learning_rate, a.iterations, signed=a.signed)
        invert = attack_lib.make_inverter(objective, optimizer, info.bounds(), info.denormalize,
                                          iterations=a.iterations, restarts=a.restarts, chunk_size=a.chunk_size,
                                          select=a.get("restart_selection", "matching"))
    client_update = jax.jit(lambda x, y: fedsgd_update(victim, variables, x, y))

    results_path = os.path.join(workdir, "results.jsonl")
    fingerprint = assembly.config_fingerprint(config)
    done = {tuple(r["target_indices"]) for r in results.read_records(results_path) if r.get("fingerprint") == fingerprint}
    size = config.targets.batch_size
    if config.targets.get("unique_labels", True):
        batches = data.unique_label_batches(target_set.labels, config.targets.starts, size)
    else:  # consecutive images from each start: labels as they come, repeats possible
        if max(config.targets.starts) + size > len(target_set.labels):
            raise ValueError(f"targets.starts reach past the {len(target_set.labels)} images of the split")
        batches = [np.arange(int(s), int(s) + size) for s in config.targets.starts]
    records, grid_truth, grid_rec = [], [], []
    for number, indices in enumerate(batches, 1):
        x01, labels = target_set.take(indices)
        if tuple(indices.tolist()) in done:
            print(f"[{number}/{len(batches)}] targets {indices.tolist()} already in {results_path}, skipped")
            continue
        print(f"[{number}/{len(batches)}] {config.name}: targets {indices.tolist()} labels {labels.tolist()}")
        update = client_update(jnp.asarray(info.normalize(x01)), jnp.asarray(labels))
        check_update_matches(update.grads, variables["params"])  # the attacker's input must fit the model
        key = jax.random.fold_in(jax.random.key(config.seed), int(indices[0]))
        start = time.perf_counter()
        record = {"attack": config.name, "dataset": info.name, "split": config.data.split, "model": victim.name,
                  "victim": victim_meta, "target_indices": indices.tolist(), "labels": labels.tolist(),
                  "batch_size": len(indices), "iterations": a.iterations, "restarts": a.restarts,
                  "as_offset": offset if reconstruct else None,
                  "prior": {k: prior_meta.get(k) for k in ("dataset", "aux_count", "aux_fraction", "epochs", "recipe")} if prior_meta else None,
                  "fingerprint": fingerprint, "config": config.to_dict()}
        if label_source in label_lib.STRATEGIES:
            attack_labels = label_lib.recover(label_source, update.grads, update.batch_size, victim, variables,
                                              jax.random.fold_in(key, 1))
        else:  # given, or learned by DLG (then these are not read)
            attack_labels = labels
        try:
            inversion = invert(update.grads, jnp.asarray(attack_labels), key, x01.shape)
        except attack_lib.AttackDivergedError as error:
            record.update(status="failed", error=str(error), seconds=time.perf_counter() - start)
            results.append_record(results_path, record)
            print(f"  failed: {error}")
            continue
        recovered = inversion.labels if label_source == "dlg" else attack_labels
        record.update(label_source=label_source, recovered_labels=np.asarray(recovered).tolist(),
                      label_accuracy=label_lib.accuracy(recovered, labels))
        scores = metrics.evaluate(inversion.images01, x01, lpips_net=config.metrics.lpips_net)
        record.update(status="ok", seconds=time.perf_counter() - start, loss=inversion.loss, terms=inversion.terms,
                      restart_losses=inversion.restart_losses, per_image=scores,
                      **{m: float(np.mean(scores[m])) for m in ("psnr", "ssim", "ssim_padded", "ssim_best_match", "mse", "lpips")
                         if m in scores})
        results.append_record(results_path, record)
        records.append(record)
        grid_truth.append(x01)
        grid_rec.append(inversion.images01[scores["order"]])
        print(f"  labels {record['recovered_labels']} (accuracy {record['label_accuracy']:.2f})  "
              f"psnr {record['psnr']:.2f} dB  ssim {record['ssim']:.3f}  "
              f"{'lpips %.3f  ' % record['lpips'] if 'lpips' in record else ''}{record['seconds']:.1f} s")
    if grid_truth:
        truth, rec = np.concatenate(grid_truth), np.concatenate(grid_rec)
        results.save_grid(os.path.join(workdir, "grid.png"), [truth, rec])
        np.savez_compressed(os.path.join(workdir, "reconstructions.npz"), ground_truth=truth, reconstruction=rec)
    return records
