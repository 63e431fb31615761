"""Experiment runner: the steps the paper-claim drivers in experiments/ share.

An experiment directory W holds the priors and victims it trained (W/priors/NAME/ae,
W/victims/NAME/victim), one study directory per arm (W/studies/NAME, a `gipip-jax study` work
directory), W/experiment.json (the manifest `gipip_jax.report` reads) and the report. Every step
skips work already on disk, so rerunning a driver after an interruption resumes it (studies
resume mid-wave from their own checkpoints).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import ml_collections

from gipip_jax import assembly, checkpoints, cli, configs, data, jobs, report, results, schema, study
from gipip_jax.workdir import write_text

AE_CONFIG = "experiments/configs/ae_cifar10.py"
VICTIM_CONFIG = "experiments/configs/victim_cifar10.py"
STUDY_CONFIG = "experiments/configs/study_cifar10.py"
GAN_CONFIG = "experiments/configs/gan_cifar10.py"
STUDY_GAN_CONFIG = "experiments/configs/study_gan_cifar10.py"
STUDY_DIP_CONFIG = "experiments/configs/study_dip_cifar10.py"


def configured(spec: str, fields: dict) -> ml_collections.ConfigDict:
    """The config of file `spec` (PATH[:ARG]) with dotted `fields` set, e.g. {"data.name": "tiny_imagenet"},
    checked against the config schema (schema.validate)."""
    config = configs.load_config(spec)
    for key, value in fields.items():
        configs.set_field(config, key, value)
    schema.validate(config)
    return config


def heldout_count(variant: str) -> int:
    """Auxiliary images a driver's variant holds out of every prior's training: the AE config's
    (experiments/configs/ae_cifar10.py), 64 in its smoke form, 1,000 otherwise."""
    return configs.load_config(f"{AE_CONFIG}:smoke" if variant == "smoke" else AE_CONFIG).heldout_count


def train_prior(workdir: str, name: str, *, dataset: str, image_size: int | None, steps: int,
                fraction: float | None = None, count: int | None = None, heldout_count: int = 1000,
                recipe: str = "mse_adam", target_heldout_mse: float | None = None) -> str:
    """Trains the AE prior on an auxiliary subset of `dataset`'s train split for about `steps`
    optimizer steps (batch 16; epochs = ceil(steps * 16 / aux size), so every fraction gets the same
    budget and differs only in data) with `recipe` (training.AE_RECIPES). A fraction that leaves fewer
    than `heldout_count` images out takes all but those (data.auxiliary_split: 100 % of a pool = all
    but its held-out images). With `target_heldout_mse` it stops after the first epoch whose held-out
    MSE is at most that (the steps are then the most). Returns W/priors/NAME/ae."""
    folder = os.path.join(workdir, "priors", name)
    path = os.path.join(folder, "ae")
    if os.path.exists(path):
        return path
    pool = assembly.load_dataset(ml_collections.ConfigDict({"name": dataset, "image_size": image_size}), "train")
    n = len(pool.labels)
    aux = len(data.auxiliary_split(n, fraction=fraction, count=count, heldout_count=heldout_count)[0])
    config = configured(AE_CONFIG, {"data.name": dataset, "data.image_size": image_size, "aux.fraction": fraction,
                                    "aux.count": count, "heldout_count": heldout_count, "recipe": recipe,
                                    "target_heldout_mse": target_heldout_mse,
                                    "epochs": max(1, math.ceil(steps * 16 / aux))})
    jobs.train_ae(config, folder)
    return path


def train_gan(workdir: str, name: str, *, dataset: str, image_size: int | None, steps: int,
              fraction: float | None = None, count: int | None = None, heldout_count: int = 1000) -> str:
    """Trains the GAN prior (DCGAN) on the same auxiliary subset `train_prior` gives the AE (with the
    same `heldout_count`), for about `steps` steps of batch min(64, aux size). Returns the checkpoint
    path W/priors/NAME/gan."""
    folder = os.path.join(workdir, "priors", name)
    path = os.path.join(folder, "gan")
    if os.path.exists(path):
        return path
    pool = assembly.load_dataset(ml_collections.ConfigDict({"name": dataset, "image_size": image_size}), "train")
    aux = len(data.auxiliary_split(len(pool.labels), fraction=fraction, count=count, heldout_count=heldout_count)[0])
    batch = min(64, aux)
    config = configured(GAN_CONFIG, {"data.name": dataset, "data.image_size": image_size, "aux.fraction": fraction,
                                     "aux.count": count, "heldout_count": heldout_count, "batch_size": batch,
                                     "epochs": max(1, math.ceil(steps / (aux // batch)))})
    jobs.train_gan(config, folder)
    return path


def train_victim(workdir: str, name: str, *, dataset: str, image_size: int | None, victim: str, epochs: int,
                 train_count: int = 0, eval_count: int = 1000) -> str:
    """Trains a victim (returns W/victims/NAME/victim) for the trained-model experiments."""
    folder = os.path.join(workdir, "victims", name)
    path = os.path.join(folder, "victim")
    if os.path.exists(path):
        return path
    test_split = "val" if dataset == "tiny_imagenet" else "test"
    config = configured(VICTIM_CONFIG, {"data.name": dataset, "data.image_size": image_size,
                                        "data.test_split": test_split, "victim.name": victim, "epochs": epochs,
                                        "train_count": train_count, "eval_count": eval_count})
    jobs.train_victim(config, folder)
    return path


def run_study(workdir: str, name: str, fields: dict, spec: str = STUDY_CONFIG) -> str:
    """Runs (or resumes) study NAME with the study config's dotted `fields` set; returns its directory."""
    folder = study_dir(workdir, name)
    config = configured(spec, {"name": name, **fields})
    started = time.perf_counter()
    print(f"== study {name}", flush=True)
    study.run(config, folder)
    print(f"== study {name} done in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def study_dir(workdir: str, name: str) -> str:
    """Where run_study keeps study NAME of a driver's work directory: W/studies/NAME."""
    return os.path.join(workdir, "studies", name)


def study_records(workdir: str, name: str) -> list[dict]:
    """The records of study NAME (W/studies/NAME/results.jsonl; [] before it runs)."""
    return results.read_records(results.records_path(study_dir(workdir, name)))


def learned_prior_fields(fields: dict, iterations: int, *, pinned_engine: bool) -> dict:
    """A GAN/DIP study's fields from a pixel study's: `iterations`, no AS, and (when the driver pins
    the engine plan) per-attack generator / U-Net weights run one after another, since vmap would
    turn their weight gradients into grouped convolutions, slow on CPU."""
    out = {**fields, "attack.iterations": iterations, "grid.as_weight": [0.0]}
    if pinned_engine:
        out.update({"engine.strategy": "unroll", "engine.attacks_per_device": 1})
    return out


def write_convergence(path: str, pairs: list[tuple[str, dict, dict]]) -> str:
    """write_paired titled "Has the attack converged?": per (label, this budget's {target: record},
    another budget's)."""
    return write_paired(path, "Has the attack converged?", pairs)


def write_paired(path: str, title: str, pairs: list[tuple[str, dict, dict]], *, p_value: bool = False) -> str:
    """Writes `path` (markdown headed `title`) and returns its text: per (label, {target: record},
    another arm's) the paired ΔPSNR with its 95 % bootstrap CI over the targets both hold (and the
    Wilcoxon p when `p_value`), the two means, and the targets at or above
    strongest.RECOGNISABLE_PSNR. A pair with fewer than 2 shared targets is left out."""
    from gipip_jax import paired, strongest

    threshold = strongest.RECOGNISABLE_PSNR
    lines = [f"# {title}", ""]
    for label, ours, other in pairs:
        a, b = paired.shared_targets(ours, other)
        if len(a) < 2:
            continue
        st = paired.paired_stats(a, b)
        p = f", {st['better']}↑/{st['worse']}↓, Wilcoxon p {st['p_value']:.2g}" if p_value else ""
        lines.append(f"- {label}, {st['n']} shared targets: ΔPSNR {st['mean']:+.2f} dB [{st['ci_low']:+.2f}, "
                     f"{st['ci_high']:+.2f}], median {st['median']:+.2f}{p}; mean {a.mean():.2f} vs {b.mean():.2f} dB; "
                     f"at or above {threshold:g} dB: {int((a >= threshold).sum())} vs {int((b >= threshold).sum())}.")
    text = "\n".join(lines)
    write_text(path, text + "\n")
    return text


def prior_metadata(path: str) -> dict:
    """The AE checkpoint's metadata (aux count and fraction, held-out error, ...)."""
    return checkpoints.load_autoencoder(path)[2]


def main(run, doc: str, name: str, argv: list[str]) -> int:
    """A driver's command line: `python experiments/NAME.py VARIANT [WORKDIR]` (default runs/NAME_VARIANT)."""
    if not argv or len(argv) > 2:
        print(doc)
        return 2
    workdir = argv[1] if len(argv) > 1 else f"runs/{name}_{argv[0]}"
    created = cli.first_missing(workdir)   # removed again if the run fails before writing anything
    from gipip_jax import workdir as hold

    try:
        with hold.interruptible():   # Ctrl-C / SIGTERM in any stage: one line, status 130 / 143
            run(argv[0], workdir)
    except hold.Interrupted as stop:
        print(f"gipip-jax: {stop}", file=sys.stderr)
        return stop.status
    except cli.input_errors() as error:   # bad input: one line, exit status 2, what was computed stays
        if created:
            cli.remove_if_empty(created)
        return cli.fail(error)
    return 0


def finish(workdir: str, manifest: dict) -> dict:
    """Writes W/experiment.json and builds the report; returns the report's paths."""
    path = os.path.join(workdir, "experiment.json")
    write_text(path, json.dumps(manifest, indent=2))
    paths = report.build(workdir)
    print(f"report: {paths['markdown']} ({len(paths['plots'])} plots, {len(paths['grids'])} grids)")
    return paths
