"""The strongest attack of a suite, per target: how much a defended update leaks to the best attacker.

A *suite* is every attack run on one target batch under one defense setting (in a defense study: the
ignorant arm and the defense-aware arm, `adaptive`; more attack kinds join by being records of the
same target and defense). Per target the leakage is the suite's best reconstruction, picked two ways,
each labelled in what this module returns:

- "oracle_free": the reconstruction with the lowest *defense-aware* matching value (`rescore`): every
  candidate of the suite scored by one criterion, that of an attacker who knows the defense, as a real
  attacker could do without the ground truth. (Each attack's own final matching value is not that
  criterion: a cosine distance and a noise NLL are on different scales.)
- "oracle": the reconstruction with the highest PSNR, an upper bound that needs the ground truth.

A target counts as recognisable when its strongest reconstruction reaches RECOGNISABLE_PSNR (the
README's "Reading the metrics": a noisy but recognisable CIFAR-10 reconstruction reads about 20 dB).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from gipip_jax import adaptive, defenses, study, summarize
from gipip_jax.results import ok_records, read_reconstructions

RECOGNISABLE_PSNR = 20.0   # dB
PICKS = ("oracle_free", "oracle")


def defense_key(setting: dict) -> str:
    """A flat setting's defense (every defense field, defaults filled in) as canonical JSON."""
    return json.dumps(defenses.parse({f: setting[f] for f in defenses.DEFENSE_DEFAULTS if f in setting}).fields,
                      sort_keys=True)


def rescore(workdir: str, records: list[dict] | None = None) -> dict[int, float]:
    """{attack_id: the defense-aware matching value of its final reconstruction} for `records`, ok
    records of study directory `workdir` (default: all of them): each scored with the knowledge of an attacker
    who knows its defense, where the study has defense-aware arms (else with the study's plain
    matching, the one criterion its attacks share). Rebuilds the study from its records' config (the
    same attacks, updates and keys); reads W/reconstructions/*.npz."""
    records = ok_records(workdir) if records is None else records
    if not records:
        return {}
    s = study.Study(ml_collections.ConfigDict(records[0]["config"]), workdir, log=lambda *_: None)
    objective = s.engine.build_objective("native")

    @jax.jit
    def matching(x, target_grads, labels, terms):
        return objective(x, target_grads, labels, terms)[1]["matching"]

    images = read_reconstructions(workdir)
    scores = {}
    for r in records:
        inputs = s.inputs([r["attack_id"]])
        terms = jax.tree.map(lambda v: v[0], inputs.terms)
        if s.adaptations:
            terms["matching"] = adaptive.knowledge({**r["setting"], "adaptive": True}, s.adaptations)
        x = s.info.normalize(np.asarray(images[r["attack_id"]], np.float32))
        scores[r["attack_id"]] = float(matching(x, jax.tree.map(lambda g: g[0], inputs.target_grads),
                                                inputs.labels[0], terms))
    return scores


def strongest(records: list[dict], scores: dict[int, float]) -> dict[str, dict[tuple, dict]]:
    """{pick: {(defense key, target indices): the suite's chosen record}} over the ok records (best
    restart of each arm first, as summarize.best_restarts keeps). pick "oracle_free": lowest
    scores[attack_id] (`rescore`); "oracle": highest PSNR."""
    suites: dict[tuple, list[dict]] = {}
    for r in summarize.best_restarts(records):
        if r.get("status") == "ok":
            suites.setdefault((defense_key(r["setting"]), tuple(r["target_indices"])), []).append(r)
    return {"oracle_free": {k: min(rs, key=lambda r: scores.get(r["attack_id"], np.inf)) for k, rs in suites.items()},
            "oracle": {k: max(rs, key=lambda r: r["psnr"]) for k, rs in suites.items()}}


def leakage(chosen: dict[tuple, dict], select: Callable[[str], bool] = lambda key: True) -> dict[str, dict]:
    """{defense key: {"targets": [indices...], "psnr": per-target PSNR (n,), "recognisable": share
    >= RECOGNISABLE_PSNR, "adaptive": share of targets whose pick is the defense-aware arm}} of the
    suites `chosen` (one pick of `strongest`) whose defense key passes `select`; targets sorted."""
    out: dict[str, dict] = {}
    for (key, target), r in sorted(chosen.items()):
        if select(key):
            cell = out.setdefault(key, {"targets": [], "psnr": [], "adaptive": []})
            cell["targets"].append(list(target))
            cell["psnr"].append(r["psnr"])
            cell["adaptive"].append(bool(r["setting"].get("adaptive")))
    for cell in out.values():
        cell["psnr"] = np.asarray(cell["psnr"])
        cell["recognisable"] = float(np.mean(cell["psnr"] >= RECOGNISABLE_PSNR))
        cell["adaptive"] = float(np.mean(cell["adaptive"]))
    return out
