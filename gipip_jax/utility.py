"""The utility side of a defense: test accuracy of a victim trained with it, cached per setting.

Every training step is one FedSGD round: a client computes `threat_models.client_update` on its
(augmented) batch with the defense (flat fields of `defenses.DEFENSE_DEFAULTS`: clipping, pruning,
noise, DP-SGD, dropout, Soteria), and the server applies the shared gradient with SGD + momentum
(`training.train_victim(..., gradient_fn=...)`). The client runs the victim in eval mode (as in the
attacks), so every setting, the undefended baseline included, trains the same way and accuracy
differences come from the defense alone. For DP-SGD settings the record also holds the (eps, delta)
of the run by `privacy.dp_sgd_epsilon` with q = batch / train_count and steps = all steps; this
assumes Poisson sampling, while training draws shuffled fixed-size batches (the usual caveat).

Results are cached in WORKDIR/utility.json, a JSON object mapping `setting_key(...)` (canonical
JSON of data, victim, training recipe and the full defense setting) to its record, so a sweep
skips settings already measured.

    gipip-jax utility --config experiments/configs/utility_cifar10.py:smoke --workdir W
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Mapping

import ml_collections
import numpy as np

from gipip_jax import assembly, defenses, privacy, threat_models, training
from gipip_jax.victims import Victim, make_victim
from gipip_jax.workdir import write_text

CACHE_FILE = "utility.json"


def defended_gradient_fn(victim: Victim, defense: Mapping) -> training.GradientFn:
    """gradient_fn(variables, x, labels, key) for `training.train_victim`: the FedSGD update a
    client shares under the flat defense setting `defense` (any subset of DEFENSE_DEFAULTS)."""
    setting = defenses.parse(defense)

    def gradient_fn(variables, x, labels, key):
        return threat_models.client_update(victim, variables, x, labels, kind="fedsgd", key=key,
                                           defense=setting).grads

    return gradient_fn


def recipe(config: ml_collections.ConfigDict) -> dict:
    """What besides the defense decides a utility number (part of every cache key)."""
    return {"dataset": config.data.name, "image_size": config.data.get("image_size"), "victim": config.victim.name,
            "init": config.victim.get("init", "flax"),
            "train_count": config.train_count, "eval_count": config.eval_count, "epochs": config.epochs,
            "batch_size": config.batch_size, "learning_rate": config.learning_rate, "augment": config.augment,
            "seed": config.seed}


def setting_key(recipe_fields: Mapping, defense: Mapping) -> str:
    """Canonical JSON of the recipe and the complete defense setting (defaults filled in)."""
    full = defenses.parse(defense).fields
    return json.dumps({"recipe": dict(recipe_fields), "defense": full}, sort_keys=True)


def read_cache(path) -> dict:
    """The cache's {key: record}; {} when the file does not exist."""
    path = pathlib.Path(path)
    if not path.exists():
        return {}
    try:
        cache = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"utility cache {path} is not valid JSON ({error}); delete it to start again") from error
    if not isinstance(cache, dict):
        raise ValueError(f"utility cache {path} holds a {type(cache).__name__}, not an object")
    return cache


def write_cache(path, cache: dict) -> None:
    """Writes {key: record} whole or not at all (workdir.write_text)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(str(path), json.dumps(cache, indent=1, sort_keys=True))


def dp_epsilon(defense: Mapping, train_count: int, batch_size: int, epochs: int, delta: float) -> float | None:
    """eps of a DP-SGD setting trained `epochs` epochs (None without DP noise)."""
    full = defenses.parse(defense).fields
    if full["dp_noise_multiplier"] == 0:
        return None
    steps = epochs * (train_count // batch_size)
    return privacy.dp_sgd_epsilon(full["dp_noise_multiplier"], batch_size / train_count, steps, delta)


def run(config: ml_collections.ConfigDict, workdir: str, log=print) -> list[dict]:
    """Measures every setting of `config.settings` not yet in WORKDIR/utility.json, each distinct one
    once; returns the records of all of them (cached or new), one per setting, in config order."""
    settings = [dict(s) for s in config.settings]
    for setting in settings:
        defenses.parse(setting)
    fields = recipe(config)
    cache_path = os.path.join(workdir, CACHE_FILE)
    cache = read_cache(cache_path)
    keys = [setting_key(fields, s) for s in settings]
    distinct = dict(zip(keys, settings))
    todo = [s for key, s in distinct.items() if key not in cache]
    if todo:
        train_set = assembly.load_dataset(config.data, "train")
        test_set = assembly.load_dataset(config.data, config.data.test_split)
        info = train_set.info
        victim = make_victim(config.victim.name, info.num_classes, info.image_shape, conv="native",
                             init=config.victim.get("init", "flax"))
        for name, count, images in (("train_count", config.train_count, train_set),
                                    ("eval_count", config.eval_count, test_set)):
            if count > len(images.labels):
                raise ValueError(f"{name} {count} exceeds the {len(images.labels)} images of {info.name}")
        x, y = train_set.take(np.arange(config.train_count))
        x_test, y_test = test_set.take(np.arange(config.eval_count))
    started = time.perf_counter()
    for number, setting in enumerate(todo, 1):
        log(f"[{number}/{len(todo)}] {victim.name} on {config.train_count} {info.name} images, seed {config.seed}, "
            f"defense {setting}{eta(started, number - 1, len(todo))}")
        _, stats = training.train_victim(
            victim, x, y, info=info, epochs=config.epochs, batch_size=config.batch_size,
            learning_rate=config.learning_rate, seed=config.seed, eval_images01=x_test, eval_labels=y_test,
            augment=config.augment, gradient_fn=defended_gradient_fn(victim, setting), log=log)
        record = {"defense": defenses.parse(setting).fields, "recipe": fields, **stats,
                  "dp_delta": config.delta,
                  "dp_epsilon": dp_epsilon(setting, config.train_count, config.batch_size, config.epochs, config.delta)}
        cache[setting_key(fields, setting)] = record
        write_cache(cache_path, cache)
        log(f"  eval_acc {record['eval_acc']:.4f} ({record['seconds']:.0f} s)")
    log(table([cache[key] for key in distinct]))
    return [cache[key] for key in keys]


def eta(started: float, done: int, total: int) -> str:
    """", ETA ..." from the mean time of the `done` of `total` settings since `started` ("" before the first)."""
    if done == 0:
        return ""
    left = (time.perf_counter() - started) / done * (total - done)
    return f", ETA {left / 60:.0f} min for the {total - done} left"


def table(records: list[dict]) -> str:
    """Markdown table: the non-default defense fields, eval accuracy, its drop from the undefended
    record (blank when there is none), and DP eps."""
    undefended = [r["eval_acc"] for r in records if r["defense"] == defenses.DEFENSE_DEFAULTS]
    lines = ["| defense | eval acc | drop | DP eps |", "|---|---|---|---|"]
    for r in records:
        changed = {k: v for k, v in r["defense"].items() if v != defenses.DEFENSE_DEFAULTS[k]}
        drop = f"{undefended[0] - r['eval_acc']:+.4f}" if undefended else ""
        eps = "" if r.get("dp_epsilon") is None else f"{r['dp_epsilon']:.3g} (δ={r['dp_delta']:g})"
        lines.append(f"| {changed or 'none'} | {r['eval_acc']:.4f} | {drop} | {eps} |")
    return "\n".join(lines)
