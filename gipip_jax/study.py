"""Study runner, the one runner of attacks: a config's grid of attacks, run in waves by the
batched engine, resumable.

    gipip-jax study  --config experiments/configs/study_cifar10.py:smoke --workdir W  (waves by the plan rule)
    gipip-jax attack --config experiments/configs/gipip_cifar10.py:smoke --workdir W  (`sequential`:
                     one attack per device; same records)

A study is targets x settings x restarts. `config.grid` lists per-attack settings: the objective
terms' fields (objectives.TERMS: tv_weight, as_weight, as_offset — None: the AE checkpoint's c —
bn_weight and feature_weight), which are traced values of the one compiled program, and defense settings (`defenses.DEFENSE_DEFAULTS`
fields, e.g. noise_std, prune_sparsity, clip_norm, dp_clip_norm), which change only the client's
shared update, and `adaptive` (adaptive.py: the attacker knows the defense; traced like the terms). Every combination is attacked on every target batch, `attack.restarts` times from
different keys. The threat model (`config.threat`: FedSGD or FedAvg local steps, clients in the
secure aggregate) is one per study, since the attacker's simulation of it is part of the program;
labels are given or recovered from each shared update (`attack.labels`, see labels.py). What the
attacks optimize is one per study too: `attack.parameterization` "pixels" (default), "gan" (GIAS:
latent, then generator weights of `gan.checkpoint`) or "dip" (an untrained U-Net's weights);
see parameterizations.py.

Work directory:
  W/plan.json              the engine plan (strategy, attacks per device, how it was chosen); reused on
                           resume so a resumed study computes exactly what the first run would have, on
                           the same machine (engine.machine(), also in every record; engine.plan=PATH
                           replays another run's)
  W/.lock                  held (flock) by the running process 0: one writer per work directory
  W/results.jsonl          one record per attack, appended when its wave finishes
  W/state/wave_NNNNN/      orbax checkpoint of the running wave, every engine.checkpoint_every steps
  W/reconstructions/wave_NNNNN.npz   attack ids and their [0, 1] reconstructions
  W/grid.png               ground truth, then one labelled row per setting (the kept restart of each of
                           the first targets, up to GRID_COLUMNS images)

Killing the process and running the same command again resumes: finished attacks (in
results.jsonl, same config fingerprint) are skipped, a wave with a checkpoint continues from it.
With several processes (`engine.distributed=True`, launched as in BUILD.md), every process runs the
same waves on its devices and process 0 writes the files.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gipip_jax import (adaptive, assembly, data, defenses, engine, metrics, report_plots, results,
                       summarize, threat_models)
from gipip_jax import labels as label_lib
from gipip_jax import workdir as work
from gipip_jax.client import check_update_matches
from gipip_jax.objectives import TERMS, make_objective, term_settings, terms_in_use
from gipip_jax.victims import make_victim

# the objective terms' config fields (weights, then options such as the AS offset c: None = the AE's own c)
TERM_DEFAULTS = {field: default for term in TERMS.values()
                 for field, default in ((term.weight_field, 0.0), *((f, None) for f in term.options.values()))}
GRID_FIELDS = tuple(TERM_DEFAULTS) + tuple(defenses.DEFENSE_DEFAULTS) + tuple(adaptive.ATTACKER_DEFAULTS)
# How the restart kept per target is chosen: the matching term alone (the authors' ranking) or the full objective.
RESTART_SELECTIONS = ("matching", "objective")
TRACE_POINTS = 20   # diagnostics per attack (record["trace"]), at chunk boundaries
TRACE_FILE = "trace.json"
GRID_COLUMNS = 16   # images per row of W/grid.png (the first target batches)
GRID_DEFAULTS = {**TERM_DEFAULTS, **defenses.DEFENSE_DEFAULTS, **adaptive.ATTACKER_DEFAULTS}
# Grid fields added after studies were published: at their default they are left out of the records'
# settings and of the config fingerprint, so those studies' records still pair with new ones and resume.
LATER_FIELDS = tuple(adaptive.ATTACKER_DEFAULTS)
LABEL_SOURCES = ("given", "dlg", *label_lib.STRATEGIES)   # "dlg": learned jointly with the image (attack.optimizer lbfgs)
THREAT_DEFAULTS = threat_models.THREAT_DEFAULTS
# engine.strategy "auto" and attacks_per_device 0: Engine.choose_plan's rule; plan: a plan.json to replay
# (it overrides strategy and attacks_per_device; "": none); distributed: see distributed.py
ENGINE_DEFAULTS = {"strategy": "auto", "attacks_per_device": 0, "chunk_size": 50, "checkpoint_every": 200,
                   "plan": "", "distributed": False, "coordinator": "", "num_processes": 0, "process_id": -1}


def default_grid(**values) -> dict:
    """A config's grid: every GRID_FIELDS entry, `values` (lists) where given, else [its default]."""
    unknown = set(values) - set(GRID_FIELDS)
    if unknown:
        raise ValueError(f"unknown grid field(s) {sorted(unknown)}; a study grid varies {GRID_FIELDS}")
    return {field: list(values.get(field, [GRID_DEFAULTS[field]])) for field in GRID_FIELDS}


def sequential(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config run one attack per device (the `attack` command), with the
    backend's fast convolutions for one attack (`engine.default_strategy`)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.engine.strategy = engine.default_strategy()
    config.engine.attacks_per_device = 1
    return config


def expand(config: ml_collections.ConfigDict, labels: np.ndarray, as_offset: float, exclude=()) -> list[dict]:
    """The study's attacks in a fixed order: targets, then settings, then restarts.

    Targets: batch numbers `targets.starts` of the split's partition into disjoint batches of
    distinct labels (`data.unique_label_batches`), skipping `exclude` (the AE's auxiliary images when
    the targets come from the split it was trained on). Each attack: id, target (its position in
    targets.starts), target_indices, setting {every GRID_FIELDS value}, restart, and its key data
    (uint32 (2,)): split(fold_in(key(seed), first index), restarts)[restart].
    """
    unknown = set(config.grid.keys()) - set(GRID_FIELDS)
    if unknown:
        raise ValueError(f"unknown grid field(s) {sorted(unknown)}; a study grid varies {GRID_FIELDS}")
    values = [list(config.grid.get(f) or [GRID_DEFAULTS[f]]) for f in GRID_FIELDS]
    settings = [dict(zip(GRID_FIELDS, combo)) for combo in itertools.product(*values)]
    for s in settings:
        defenses.parse(defense_of(s))
        adaptive.adapted(s)   # checks the adaptive switch
        for field in LATER_FIELDS:
            if s[field] == GRID_DEFAULTS[field]:
                del s[field]
        s["as_offset"] = as_offset if s["as_offset"] is None else float(s["as_offset"])
        if s["as_weight"] > 0 and as_offset is None:
            raise ValueError("grid.as_weight > 0 needs the AE prior (prior.checkpoint)")
    restarts = int(config.attack.restarts)
    attacks = []
    size = config.targets.batch_size
    if config.targets.get("unique_labels", True):
        batches = data.unique_label_batches(labels, config.targets.starts, size, exclude=exclude)
    else:   # consecutive images from each start: labels as they come, repeats possible
        if max(config.targets.starts) + size > len(labels):
            raise ValueError(f"targets.starts reach past the {len(labels)} images of the split")
        batches = [np.arange(int(start), int(start) + size) for start in config.targets.starts]
    for target, indices in enumerate(batches):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), int(indices[0])), restarts)
        for setting in settings:
            for restart in range(restarts):
                attacks.append({"id": len(attacks), "target": target, "target_indices": indices.tolist(),
                                "setting": dict(setting), "restart": restart,
                                "key": np.asarray(jax.random.key_data(keys[restart]))})
    return attacks


def attack_name(config: ml_collections.ConfigDict, setting: dict) -> str:
    kind = config.attack.get("parameterization", "pixels")
    if config.attack.get("optimizer", "adam") == "lbfgs":
        return f"{config.name}:{'dlg' if config.attack.get('labels') == 'dlg' else 'idlg'}"
    if kind != "pixels":
        return f"{config.name}:{kind}{'+as' if setting['as_weight'] > 0 else ''}"
    arm = 'gipip' if setting['as_weight'] > 0 else 'ig'
    if config.attack.get("init", "random") == "inverter":   # Learning to Invert alone, or as the start of the attack
        return f"{config.name}:lti" if config.attack.iterations == 0 else f"{config.name}:lti+{arm}"
    return f"{config.name}:{arm}"


def setting_label(setting: dict) -> str:
    """The setting's fields other than λ_TV, λ_AS and c that differ from their defaults, e.g. "noise_std=0.01"."""
    return ", ".join(f"{f}={setting[f]}" for f in GRID_FIELDS
                     if f not in ("tv_weight", "as_weight", "as_offset") and setting.get(f, GRID_DEFAULTS[f]) != GRID_DEFAULTS[f])


def fingerprint(config: ml_collections.ConfigDict) -> str:
    """The study's config fingerprint, LATER_FIELDS left out of the grid while they hold only their default,
    and engine.plan and attack.init (also added later) while they are "" and "random" (published studies
    keep their fingerprints)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for field in LATER_FIELDS:
        if list(config.grid.get(field) or [GRID_DEFAULTS[field]]) == [GRID_DEFAULTS[field]] and field in config.grid:
            del config.grid[field]
    if "plan" in config.engine and not config.engine.plan:
        del config.engine["plan"]
    if config.attack.get("init") == "random":
        del config.attack["init"]
    return assembly.config_fingerprint(config)


def defense_of(setting: dict) -> dict:
    """The defense part of a setting (DEFENSE_DEFAULTS fields)."""
    return {f: setting[f] for f in defenses.DEFENSE_DEFAULTS}


def defense_grid(settings: list[dict]) -> dict[str, list]:
    """The dotted study-grid fields ({"grid.noise_std": [...], ...}) whose product is exactly the flat
    defense `settings`, which must differ in at most one field (else ValueError); fields no setting
    names keep their defaults."""
    fields = list(dict.fromkeys(f for s in settings for f in s))
    grid = {f"grid.{f}": list(dict.fromkeys(s.get(f, defenses.DEFENSE_DEFAULTS[f]) for s in settings)) for f in fields}
    if int(np.prod([len(values) for values in grid.values()] or [1])) != len(settings):
        raise ValueError(f"defense settings {settings} are not one field at a time")
    return grid


class Study:
    """Everything a study's waves need, built once from the config."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, log=print):
        self.config, self.workdir, self.log = config, workdir, log
        self.fingerprint = fingerprint(config)
        self.target_set = assembly.load_dataset(config.data, config.data.split)
        info = self.info = self.target_set.info
        self.victim, self.variables, self.victim_meta = assembly.victim_and_variables(config, info)
        reconstruct, offset, self.prior_meta = assembly.prior(config)
        self.excluded = assembly.prior_auxiliary_indices(config, len(self.target_set.labels))
        if len(self.excluded):
            log(f"targets skip the {len(self.excluded)} auxiliary images the AE prior was trained on")
        self.attacks = expand(config, self.target_set.labels, offset if reconstruct else None, self.excluded)
        # the terms of the one objective every attack shares; a setting without one has weight 0
        self.term_names = terms_in_use(a["setting"] for a in self.attacks)
        # the attacker sides (defense-aware matching) some adaptive attack of the study needs
        self.adaptations = adaptive.in_use(a["setting"] for a in self.attacks)
        self.threat = threat_models.check_threat_config(dict(config.get("threat") or {}))
        self.selection = config.attack.get("restart_selection", "matching")
        if self.selection not in RESTART_SELECTIONS:
            raise ValueError(f"unknown attack.restart_selection {self.selection!r}; choose one of {RESTART_SELECTIONS}")
        self.label_source = config.attack.get("labels", "given")
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(f"unknown attack.labels {self.label_source!r}; choose one of {LABEL_SOURCES}")
        optimization = assembly.optimization(config, info)
        self.gan_meta = optimization.gan_meta
        self.inverter_meta = optimization.inverter_meta   # the LTI network the attacks start from, or None
        defaults = self.term_values(GRID_DEFAULTS)

        def build(conv):
            victim = make_victim(self.victim.name, info.num_classes, info.image_shape, conv=conv)
            attacker = adaptive.attacker_model(self.adaptations, adaptive.context(
                victim, self.variables, config.targets.batch_size, self.threat)) if self.adaptations else None
            return make_objective(victim, self.variables, info, matching=config.attack.matching,
                                  terms=defaults, reconstruct=reconstruct, attacker=attacker,
                                  update_fn=threat_models.attacker_update_fn(victim, self.variables, **self.threat))

        shape = (config.targets.batch_size, *info.image_shape)
        self.engine = engine.Engine(build, optimization.optimizer, info.bounds(), info.denormalize, shape=shape,
                                    chunk_size=config.engine.chunk_size, max_tries=config.attack.max_tries,
                                    parameterization=optimization.parameterization,
                                    line_search=optimization.line_search)
        self.target_grads = self.attack_labels = None   # the shared updates, made when an attack first needs them

    def _client_updates(self):
        """The shared update of every (target batch, defense setting): all the attacker gets besides
        the model, and the labels it attacks with (given, or recovered from that update)."""
        updates = {}
        for a in self.attacks:
            a["update"] = updates.setdefault((a["target"], json.dumps(defense_of(a["setting"]), sort_keys=True)),
                                             (len(updates), a))[0]
        grads, attack_labels, compiled = [], [], {}
        for number, ((_, defense_key), (_, first)) in enumerate(updates.items()):
            x01, y = self.target_set.take(np.asarray(first["target_indices"]))
            if defense_key not in compiled:   # one compiled client update per defense setting
                compiled[defense_key] = jax.jit(functools.partial(
                    lambda x, labels, key, defense: threat_models.aggregated_update(
                        self.victim, self.variables, x, labels, key=key, defense=defense, **self.threat).grads,
                    defense=defenses.parse(defense_of(first["setting"]))))
            key = jax.random.fold_in(jax.random.key(self.config.seed + 1), number)
            update_grads = compiled[defense_key](self.info.normalize(x01), y, key)
            check_update_matches(update_grads, self.variables["params"])
            if self.label_source == "dlg":   # learned by the attack: it gets none
                y = np.zeros_like(y)
            elif self.label_source != "given":
                y = label_lib.recover(self.label_source, update_grads, len(y), self.victim, self.variables,
                                      jax.random.fold_in(key, 1))
            grads.append(jax.tree.map(np.asarray, update_grads))
            attack_labels.append(np.asarray(y, np.int32))
        self.target_grads = jax.tree.map(lambda *g: np.stack(g), *grads)
        self.attack_labels = np.stack(attack_labels)

    def inputs(self, ids) -> engine.AttackInputs:
        """Host inputs of the attacks `ids` (a wave, padding included)."""
        if self.target_grads is None:
            self._client_updates()
        chosen = [self.attacks[i] for i in ids]
        updates = np.array([a["update"] for a in chosen])
        terms = engine.per_attack_terms([self.term_values(a["setting"]) for a in chosen])
        return engine.AttackInputs(jax.tree.map(lambda g: g[updates], self.target_grads), self.attack_labels[updates],
                                   terms, np.stack([a["key"] for a in chosen]))

    def term_values(self, setting: dict) -> dict:
        """The objective's settings of an attack of flat `setting`: its terms', and the attacker's
        knowledge of the defense ("matching") when the study has adaptive attacks."""
        values = term_settings(setting, self.term_names)
        if self.adaptations:
            values["matching"] = adaptive.knowledge(setting, self.adaptations)
        return values

    def plan(self) -> engine.Plan:
        """The study's plan, made once: replayed from engine.plan (another run's plan.json), else this
        work directory's W/plan.json (a resumed run), else by Engine.choose_plan's rule; printed and
        saved to W/plan.json (with the backend, device kind and engine.machine() it ran on). A plan
        replayed on another machine says so in one line: its records will not be bit-identical."""
        if hasattr(self, "_plan"):
            return self._plan
        path, e, devices = os.path.join(self.workdir, "plan.json"), self.config.engine, self.engine.num_devices
        kind, table = jax.devices()[0].device_kind, []
        saved = json.load(open(path)) if os.path.exists(path) else {}
        if e.get("plan"):
            source = assembly.resolve_path(e.plan)
            plan, made = engine.read_plan(source, devices)
        elif saved.get("fingerprint") == self.fingerprint and saved.get("num_devices") == devices:
            plan, source, made = engine.Plan(saved["strategy"], saved["attacks_per_device"], devices), path, saved
        else:
            made = {}
            if jax.process_count() > 1 and (e.strategy == "auto" or not e.attacks_per_device):
                raise ValueError("a multi-process study needs engine.strategy and engine.attacks_per_device set "
                                 "(or engine.plan): every process must compile the same program")
            self.log(f"choosing a plan for {len(self.attacks)} attacks on {devices} {jax.default_backend()} device(s)")
            example = self.inputs(range(min(len(self.attacks), 2)))
            plan, table = self.engine.choose_plan(example, len(self.attacks), strategy=e.strategy,
                                                  attacks_per_device=e.attacks_per_device, log=self.log)
            source = "the config" if e.strategy != "auto" and e.attacks_per_device else "the rule of engine.choose_plan"
        self.log(f"plan: {plan.strategy} x{plan.attacks_per_device}/device on {devices} device(s), from {source}")
        there = made.get("machine") or made.get("device_kind")   # plan files older than "machine" name the kind
        here = engine.machine() if made.get("machine") else kind
        if there and there != here:
            self.log(f"{source} was made on {there}; this is {here}: the same plan, but the records will not be "
                     "bit-identical to ones made there")
        if jax.process_index() == 0 and source != path:
            work.write_text(path, json.dumps(
                {**plan._asdict(), "fingerprint": self.fingerprint, "source": source, "candidates": table,
                 "backend": jax.default_backend(), "device_kind": kind, "machine": engine.machine()},
                indent=2, sort_keys=True, default=float))
        self._plan = plan
        return plan


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """Runs (or resumes) the study; returns the records this run wrote.

    Process 0 holds W's lock for the whole run (workdir.held: a second run on W stops at once with
    one line; the other processes of a multi-process study hold nothing). SIGINT / SIGTERM end the
    run with workdir.Interrupted saying where, a full disk with workdir.DiskFull; either way
    results.jsonl keeps whole records and the last wave checkpoint stays, so the same command resumes.
    """
    e = config.engine
    if e.get("distributed"):
        # CPU collectives, timeouts, one-line errors; cluster auto-detection (SLURM, Open MPI, TPU
        # pods, ...) unless coordinator/num_processes/process_id are given. See distributed.py.
        from gipip_jax import distributed
        distributed.initialize(e)
        print(distributed.describe(), flush=True)
        config = distributed.without_launch_fields(config)   # one fingerprint for all processes and relaunches
    os.makedirs(workdir, exist_ok=True)
    writer = jax.process_index() == 0
    results_path = results.records_path(workdir)
    study = program = None
    where = {"wave": 0, "step": 0}   # the running wave (from 1) and its step, for an interrupt's line

    def recorded() -> set:
        return {r["attack_id"] for r in results.read_records(results_path) if r.get("fingerprint") == fingerprint(config)}

    try:
        with work.held(workdir, hold=writer), work.quiet_libraries(), work.interruptible():
            study = Study(config, workdir)
            done = recorded()
            total = len(study.attacks)
            records = []
            if len(done) < total:   # a finished study compiles nothing
                plan = study.plan()
                program = study.engine.program(plan, study.inputs([0]))
                size = plan.wave_size
                waves = [list(range(start, min(start + size, total))) for start in range(0, total, size)]
                print(f"{total} attacks ({len(done)} already done) in {len(waves)} wave(s) of {size}: "
                      f"{plan.strategy}, {plan.attacks_per_device} per device x {plan.num_devices} device(s)")
                for number, ids in enumerate(waves):
                    if all(i in done for i in ids):
                        continue
                    padded = ids + [ids[-1]] * (size - len(ids))   # padding slots repeat the last attack; never recorded
                    records += _run_wave(study, program, number, len(waves), ids, padded, done, results_path,
                                         writer, where)
                    done.update(ids)
            if jax.process_count() > 1:   # the others read results.jsonl once process 0 has written it
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices("gipip_jax.study.run: results written")
            finished = [r for r in results.read_records(results_path) if r.get("fingerprint") == study.fingerprint]
            if writer:
                _save_grid(study, finished, workdir)
            if finished:
                print(summarize.table(finished))
            failed = sum(r.get("status") != "ok" for r in finished)
            print(f"{len({r['attack_id'] for r in finished})}/{total} attacks done, {failed} failed; "
                  f"results in {results_path}")
            return records
    except work.Interrupted as stop:
        at = f"wave {where['wave']}, step {where['step']}" if where["wave"] else "the start, before the first wave"
        stop.at = f"{at}; {len(recorded())}/{len(study.attacks) if study else '?'} attacks recorded"
        raise
    except Exception as error:
        if not work.is_disk_full(error):
            raise
        needed = None if program is None else work.space_needed(
            program.state_shape, len(study.attacks) - len(recorded()), plan.wave_size,
            study.engine.shape, results_path)
        raise work.DiskFull(workdir, needed) from error


def _duration(seconds: float) -> str:
    """"42 s", "12 min" or "3.4 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def trace_steps(iterations: int, chunk_size: int, points: int = TRACE_POINTS) -> list[int]:
    """The steps at which a wave's trace is taken: ~`points` chunk boundaries spread over the
    iterations, and the last step."""
    every = max(1, round(iterations / points / chunk_size)) * chunk_size
    return sorted({*range(every, iterations, every), iterations})


class Trace:
    """Per-attack diagnostics of a wave at `trace_steps`: the objective terms, the norm of each
    term's weighted gradient, and the mean order-matched PSNR of the current images.

    Stored next to the wave's checkpoint (trace.json) so a resumed wave keeps what it had.
    """

    def __init__(self, study, program, padded, iterations: int):
        self.study, self.program, self.padded = study, program, padded
        self.at = set(trace_steps(iterations, study.config.engine.chunk_size))
        # (slots, B, H, W, C): every slot's ground truth, also the wave's metrics' (see _run_wave)
        self.truth = np.stack([study.target_set.take(np.asarray(study.attacks[i]["target_indices"]))[0] for i in padded])
        self.rows: list[dict] = []   # one per trace point: step, terms, grad_norms, psnr (lists over slots)

    def maybe_take(self, state, inputs, step: int) -> None:
        if step not in self.at or any(row["step"] == step for row in self.rows):
            return
        terms, norms, images01 = engine.to_host(self.program.diagnose(state, inputs))
        steps = engine.to_host(state.attack.step)
        # all slots at once (one MSE call for the order matching, one PSNR call): a wave's cost, not a slot's
        finite = np.isfinite(images01).reshape(len(images01), -1).all(axis=1)
        orders = metrics.match_orders(images01, self.truth, needed=finite)
        rec = np.take_along_axis(images01, orders[:, :, None, None, None], axis=1)
        per_image = np.asarray(metrics.psnr(rec.reshape(-1, *rec.shape[2:]), self.truth.reshape(-1, *rec.shape[2:])))
        psnr = [float(np.mean(p)) for p in per_image.reshape(len(rec), -1)]
        self.rows.append({"step": step, "attack_steps": steps.tolist(), "psnr": psnr,
                          "terms": {k: v.tolist() for k, v in terms.items()},
                          "grad_norms": {k: v.tolist() for k, v in norms.items()}})

    def of_slot(self, slot: int) -> dict:
        """The record's trace: steps, psnr, terms {name: [...]}, grad_norms {name: [...]} (lists over steps)."""
        rows = sorted(self.rows, key=lambda row: row["step"])
        return {"steps": [row["attack_steps"][slot] for row in rows], "psnr": [row["psnr"][slot] for row in rows],
                "terms": {k: [row["terms"][k][slot] for row in rows] for k in (rows[0]["terms"] if rows else {})},
                "grad_norms": {k: [row["grad_norms"][k][slot] for row in rows] for k in (rows[0]["grad_norms"] if rows else {})}}

    def save(self, folder: str) -> None:
        """Written ahead of the wave's checkpoint; `load` drops rows past the checkpoint it resumes from."""
        os.makedirs(folder, exist_ok=True)
        work.write_text(os.path.join(folder, TRACE_FILE),
                        json.dumps({"rows": self.rows}, indent=2, sort_keys=True, default=float))

    def load(self, folder: str, chunks_run: int) -> None:
        path = os.path.join(folder, TRACE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                limit = chunks_run * self.study.config.engine.chunk_size
                self.rows = [row for row in json.load(f)["rows"] if row["step"] <= limit]


def _run_wave(study, program, number, count, ids, padded, done, results_path, writer, where) -> list[dict]:
    """Runs (or resumes) wave `number`; `where` gets the wave and its step as it goes. A signal waits
    while a checkpoint or the wave's records are written (workdir.uninterrupted)."""
    config, iterations = study.config, study.config.attack.iterations
    path = os.path.abspath(os.path.join(study.workdir, "state", f"wave_{number:05d}"))
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=1))
    state, chunks = None, manager.latest_step() or 0   # checkpoints are labelled by chunks run
    trace = Trace(study, program, padded, iterations)
    if chunks:
        try:
            state = manager.restore(chunks, args=ocp.args.StandardRestore(program.state_shape))
            trace.load(path, chunks)
            print(f"wave {number + 1}/{count}: resumed after {chunks} chunk(s) from {path}")
        except Exception as error:  # torn, corrupt or from another plan: only this wave's progress is lost
            print(f"wave {number + 1}/{count}: checkpoint {path} is unreadable ({type(error).__name__}); "
                  "the wave starts over")
            manager.close()
            shutil.rmtree(path)
            manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=1))
            state, chunks = None, 0
            trace = Trace(study, program, padded, iterations)
    start, resumed, last_log = time.perf_counter(), chunks, [0.0]
    where.update(wave=number + 1, step=chunks * config.engine.chunk_size)
    per_save = max(1, config.engine.checkpoint_every // config.engine.chunk_size)
    inputs = study.inputs(padded)
    device_inputs = study.engine.put(inputs)
    compute = [0.0, 0.0]   # seconds in the engine's programs (waiting on each chunk), the time the last wait ended

    def on_chunk(s):
        nonlocal chunks
        chunks += 1
        steps = engine.to_host(s.attack.step)   # waits for the chunk
        compute[0] += time.perf_counter() - compute[1]
        where["step"] = int(steps.min())
        trace.maybe_take(s, device_inputs, chunks * config.engine.chunk_size)
        if chunks % per_save == 0 and not engine.wave_finished(s, iterations):
            with work.uninterrupted():
                if writer:   # before the checkpoint: a kill between the two must not leave a checkpoint without its trace
                    trace.save(path)
                manager.save(chunks, args=ocp.args.StandardSave(s))
                manager.wait_until_finished()
        now = time.perf_counter()
        if now - last_log[0] >= 10 or steps.min() >= iterations:
            rate = len(padded) * (chunks - resumed) * config.engine.chunk_size / (now - start)
            later = max(0, len(study.attacks) - len(done | set(ids)))   # attacks of the waves after this one
            left = (len(padded) * (iterations - int(steps.min())) + later * iterations) / max(rate, 1e-9)
            print(f"wave {number + 1}/{count}  step {int(steps.min())}/{iterations}  attacks done "
                  f"{len(done)}/{len(study.attacks)}  {rate:.1f} attack-steps/s  ETA {_duration(left)}", flush=True)
            last_log[0] = now
        compute[1] = time.perf_counter()

    compute[1] = time.perf_counter()
    _, result = study.engine.run_wave(program, inputs, iterations, state=state, on_chunk=on_chunk,
                                      device_inputs=device_inputs)
    compute[0] += time.perf_counter() - compute[1]
    manager.wait_until_finished()
    seconds = time.perf_counter() - start
    records = []
    with work.uninterrupted():   # a signal waits for the wave's records and its checkpoint's removal
        if writer:
            os.makedirs(os.path.join(study.workdir, "reconstructions"), exist_ok=True)
            real = len(ids)
            np.savez_compressed(os.path.join(study.workdir, "reconstructions", f"wave_{number:05d}.npz"),
                                ids=np.asarray(ids), images01=result.images01[:real])
            todo = [slot for slot, attack_id in enumerate(ids) if attack_id not in done]
            ok = ~np.asarray(result.failed, bool) & np.isfinite(result.loss)
            needed = np.zeros(len(padded), bool)
            needed[todo] = ok[todo]
            # the whole (padded) wave through each metric at once: one fixed shape per study, so LPIPS & co. compile once
            scores = metrics.evaluate_batch(result.images01, trace.truth, lpips_net=config.metrics.lpips_net,
                                            needed=needed)
            for slot in todo:
                records.append(_record(study, ids[slot], slot, result, seconds, number, len(padded),
                                       trace.of_slot(slot), scores=scores[slot], compute_seconds=compute[0]))
            results.append_records(results_path, records)   # one write and one fsync per wave
        manager.close()
        if writer:
            shutil.rmtree(path, ignore_errors=True)
    return records


def _record(study, attack_id, slot, result, wave_seconds, wave, wave_size, trace, scores,
            compute_seconds=None) -> dict:
    """The attack's record; scores: its `metrics.evaluate` (from the wave's evaluate_batch); compute_seconds: the
    wave's seconds in the engine's programs (this run's part, when resumed), the rest of wave_seconds
    being traces, checkpoints and the host's work."""
    a, config, info = study.attacks[attack_id], study.config, study.info
    _, labels = study.target_set.take(np.asarray(a["target_indices"]))
    record = {"attack": attack_name(config, a["setting"]), "attack_id": attack_id, "dataset": info.name,
              "split": config.data.split, "model": study.victim.name, "victim": study.victim_meta,
              "target_indices": a["target_indices"], "labels": labels.tolist(), "batch_size": len(labels),
              "iterations": config.attack.iterations, "restart": a["restart"], "restarts": config.attack.restarts,
              "setting": a["setting"], "setting_label": setting_label(a["setting"]), "threat": study.threat,
              "attacker_knows": adaptive.knows(a["setting"]), "steps": int(result.steps[slot]),
              "tries": int(result.tries[slot]), "label_source": study.label_source,
              # the labels the objective saw: given, recovered from the update, or learned (argmax)
              "recovered_labels": result.labels[slot].tolist(),
              "label_accuracy": label_lib.accuracy(result.labels[slot], labels),
              # this attack's share of its wave's wall time (this run's part of it, when resumed)
              "wave": wave, "wave_size": wave_size, "wave_seconds": wave_seconds, "seconds": wave_seconds / wave_size,
              "wave_compute_seconds": compute_seconds,
              "prior": {k: study.prior_meta.get(k) for k in ("dataset", "aux_count", "aux_fraction", "epochs", "recipe")}
              if study.prior_meta and a["setting"]["as_weight"] > 0 else None,
              "parameterization": config.attack.get("parameterization", "pixels"), "gan_prior": study.gan_meta,
              "inverter": study.inverter_meta,
              "trace": trace, "fingerprint": study.fingerprint, "plan": study.plan()._asdict(),
              "machine": engine.machine(),
              "config": config.to_dict()}
    if result.failed[slot] or not np.isfinite(result.loss[slot]):
        record.update(status="failed", error=f"objective NaN/Inf after {int(result.tries[slot])} restart(s)")
        return record
    record.update(status="ok", loss=float(result.loss[slot]),
                  terms={k: float(v[slot]) for k, v in result.terms.items()}, per_image=scores,
                  **{m: float(np.mean(scores[m])) for m in ("psnr", "ssim", "ssim_padded", "ssim_best_match", "mse", "lpips")
                     if m in scores})
    return record


def _save_grid(study, finished: list[dict], workdir: str) -> None:
    """W/grid.png: ground truth, then one labelled row per arm with the restart of each target that
    summarize.best_restarts keeps (order matched); at most GRID_COLUMNS images per row."""
    targets = sorted({tuple(a["target_indices"]) for a in study.attacks})
    shown = []
    for t in targets:
        if sum(len(u) for u in shown) + len(t) > GRID_COLUMNS:
            break
        shown.append(t)
    shown_set = set(shown)
    kept = [r for r in summarize.best_restarts(finished)
            if r.get("status") == "ok" and tuple(r["target_indices"]) in shown_set]
    # only the reconstruction files of the shown attacks' waves (a wave's file: wave_NNNNN.npz)
    folder = os.path.join(workdir, "reconstructions")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if all("wave" in r for r in kept):
        wanted = {f"wave_{r['wave']:05d}.npz" for r in kept}
        names = [name for name in names if name in wanted]
    needed, images = {r["attack_id"] for r in kept}, {}
    for name in names:
        with np.load(os.path.join(folder, name)) as saved:
            images.update((i, image) for i, image in zip(saved["ids"].tolist(), saved["images01"]) if i in needed)
    kept = [r for r in kept if r["attack_id"] in images]
    arms = {}
    for r in kept:
        arms.setdefault(json.dumps(r["setting"], sort_keys=True), {})[tuple(r["target_indices"])] = r
    rows = [("ground truth", np.concatenate([study.target_set.take(np.asarray(t))[0] for t in shown]))]
    for key in sorted(arms):
        by_target = arms[key]
        if all(t in by_target for t in shown):
            setting = json.loads(key)
            label = f"{attack_name(study.config, setting).split(':')[-1]} λ_AS={setting['as_weight']:g}"
            extra = setting_label(setting)
            rows.append((label + (f", {extra}" if extra else ""),
                         np.concatenate([images[by_target[t]["attack_id"]][by_target[t]["per_image"]["order"]]
                                         for t in shown])))
    if len(rows) > 1:
        report_plots.save_labelled_grid(os.path.join(workdir, "grid.png"), rows)
