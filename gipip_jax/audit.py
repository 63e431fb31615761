"""`gipip-jax audit`: how much does one federated-learning setup leak, and what would a stronger
defense cost?

    gipip-jax audit --model tests/fixtures/my_victim.py:MyVictim --data cifar10 --batch-size 1 \\
        --defense noise_std=0.01 --workdir runs/audit

The setup (model, data, batch size, FedSGD or FedAvg, clients under secure aggregation, defense)
becomes studies run by the one study runner (gipip_jax/study.py), in W/studies/:

- "declared": the setup as given, under the strongest suite: labels recovered from the update first
  (iDLG at batch size 1, bias_count above: the most accurate in experiments/README.md's label table),
  then Inverting Gradients and GI-PIP (when an AE prior fits the images), each also in its
  defense-aware form when a defense is on (grid `adaptive`, gipip_jax/adaptive.py). Every attack
  takes Inverting Gradients' signed Adam steps (SIGNED_STEPS).
- "stronger_<defense>": the next `--stronger` settings of the declared defense (`Defense.stronger`),
  or of Gaussian noise and pruning when none is declared, under IG, ignorant and defense-aware; and
  "stronger_least_leaking": the defense study's least-leaking defense at 2 points of accuracy drop
  (experiments/defenses.py), once that study has published its verdicts.

Per target the leakage is the suite's strongest reconstruction picked without the ground truth
(strongest.py, "oracle_free"); the PSNR-best pick ("oracle") is reported beside it as an upper
bound. An image counts as recognisable at PSNR >= strongest.RECOGNISABLE_PSNR or AlexNet-LPIPS <=
RECOGNISABLE_LPIPS (README, "Reading the metrics": Gaussian noise of std 0.1 on a CIFAR-10 image
reads 20.4 dB and 0.034). W/report.md and W/report.html hold the headline, the worst cases, the
threat model, DP's (eps, delta) and the "what would help" table (accuracy cost from `--utility`, a
`gipip-jax utility` config, else "not measured"). `--fail-above METRIC=VALUE` exits with status 1
when the declared setup leaks more (for an FL product's own CI). Rerunning resumes; a work directory
holds one setup (W/audit.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from gipip_jax import configs

# The modules that run the studies (they import JAX) are imported where they are used, so that
# `gipip-jax --help` and the other commands' parsers stay fast.
RECOGNISABLE_LPIPS = 0.034   # AlexNet-LPIPS of Gaussian noise std 0.1 (README, "Reading the metrics")
SHIPPED_PRIOR = "experiments/checkpoints/ae_cifar10_aux5"   # MSE/Adam AE, 32x32x3, 2,500 CIFAR-10 train images
AS_WEIGHT = 0.1     # λ_AS of the confirmed AS claim (experiments/README.md)
# Signed Adam steps, as Inverting Gradients takes them: on the ConvNet at bs 1, 16 CIFAR-10 targets, 2,000
# iterations, IG with signed steps beat GI-PIP's unsigned ones by +3.57 dB [+1.81, +5.58], 13 of 16
# (experiments/results/defenses/budget_pilot). `--set attack.signed=False` takes the unsigned ones.
SIGNED_STEPS = True
TV_WEIGHTS = {1: 1e-6}   # λ_TV at batch size 1 (IG's); larger batches 1e-5 (the defense study's bs 4)
UNDEFENDED_OPTIONS = ("noise", "prune")   # defenses the "what would help" table tries when none is declared
# The defense study's verdicts (experiments/defenses.py, published): its least-leaking defense at
# LEAST_LEAKING_BUDGET points of accuracy drop against the strongest suite joins the table.
DEFENSE_VERDICTS = "experiments/results/defenses/verdicts.json"
LEAST_LEAKING_BUDGET = 2.0
DELTA = 1e-5
FAIL_METRICS = {"median_psnr": "median PSNR (dB)", "max_psnr": "worst-case PSNR (dB)",
                "recognisable": "share of images recognisable"}
WORST_SHOWN = 8
RERUN_FREE = ("fail_above", "utility", "stronger")   # setup fields a rerun in the same W may change


class AuditError(ValueError):
    """Bad audit input (one line, exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The audit's flags, in the words of someone who trains the model."""
    model = parser.add_argument_group("your model")
    model.add_argument("--model", required=True, help="a built-in victim name (convnet, lenet, resnet18, ...), "
                       "PATH.py:Class or package.module:Class (a Flax module: see gipip_jax/victims.py)")
    model.add_argument("--checkpoint", default="", help="its trained weights (a `gipip-jax train-victim` "
                       "checkpoint); default: untrained, the weights at the first round")
    model.add_argument("--init", default="flax", choices=("flax", "torch"), help="untrained weights' init")
    model.add_argument("--init-seed", type=int, default=0)
    data = parser.add_argument_group("your data")
    data.add_argument("--data", default="cifar10", help="a tfds name or folder:PATH (class subfolders of images)")
    data.add_argument("--split", default="test", help="the split the attacked images come from")
    data.add_argument("--image-size", type=int, default=None, help="resize images to this side")
    data.add_argument("--data-dir", default=None, help="tfds data_dir (default $GIPIP_JAX_DATA)")
    fl = parser.add_argument_group("your federated setup")
    fl.add_argument("--batch-size", type=int, default=1, help="images in one client update")
    fl.add_argument("--fl", default="fedsgd", choices=("fedsgd", "fedavg"),
                    help="fedsgd: one gradient shared; fedavg: the weight change after local steps")
    fl.add_argument("--local-steps", type=int, default=1, help="FedAvg local steps")
    fl.add_argument("--local-lr", type=float, default=1e-4, help="FedAvg local learning rate")
    fl.add_argument("--clients", type=int, default=1, help="clients summed by secure aggregation")
    fl.add_argument("--defense", action="append", default=[], metavar="FIELD=VALUE",
                    help="a defense field, repeatable, e.g. noise_std=0.01 or prune_sparsity=0.9 (every "
                         "grid.* defense field of `gipip-jax study --help-config`)")
    fl.add_argument("--train-size", type=int, default=0, help="a client's training images (DP-SGD's eps)")
    fl.add_argument("--epochs", type=int, default=0, help="training epochs (DP-SGD's eps)")
    audit = parser.add_argument_group("the audit")
    audit.add_argument("--targets", type=int, default=16, help="client batches attacked (default 16)")
    audit.add_argument("--iterations", type=int, default=2000, help="attack iterations (default 2000; 4000 for a converged attack on the "
                       "ConvNet: README, 'Audit your own model')")
    audit.add_argument("--prior", default="auto", help="AE prior for GI-PIP: a `gipip-jax train-ae` checkpoint, "
                       f"'none', or 'auto' (the shipped {SHIPPED_PRIOR} when images are 32x32x3)")
    audit.add_argument("--stronger", type=int, default=2, help="stronger defense settings tried, the next ones "
                       "on the defense's ladder (fewer where the ladder ends; default 2, 0: none)")
    audit.add_argument("--utility", default="", metavar="CONFIG", help="a `gipip-jax utility` config "
                       "(PATH.py[:ARG]) to measure each setting's accuracy cost with; default: not measured")
    audit.add_argument("--fail-above", default="", metavar="METRIC=VALUE",
                       help=f"exit 1 when the declared setup leaks more; METRIC: {', '.join(FAIL_METRICS)}")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a study config field for every study (e.g. engine.plan=PATH)")
    parser.add_argument("--workdir", required=True, help="directory for the studies and the report")


def setup_of(args: argparse.Namespace) -> dict:
    """The checked setup (what W/audit.json holds) from the parsed flags."""
    from gipip_jax import defenses

    for name in ("batch_size", "local_steps", "clients", "targets"):
        if getattr(args, name) < 1:
            raise AuditError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("iterations", "stronger", "train_size", "epochs"):
        if getattr(args, name) < 0:
            raise AuditError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    defense = {}
    for assignment in args.defense:
        key, sep, text = assignment.partition("=")
        if not sep or key not in defenses.DEFENSE_DEFAULTS:
            raise AuditError(f"--defense {assignment!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(defenses.DEFENSE_DEFAULTS)}")
        defense[key] = configs.parse_value(text)
    defenses.parse(defense)   # a bad value: one line naming the field
    if args.utility:   # a missing or broken config: one line before any attack
        utility_config({"model": args.model, "init": args.init, "data": args.data, "image_size": args.image_size,
                        "data_dir": args.data_dir, "utility": args.utility}, [{}])
    fail = parse_threshold(args.fail_above) if args.fail_above else None
    return {"model": args.model, "checkpoint": args.checkpoint, "init": args.init, "init_seed": args.init_seed,
            "data": args.data, "split": args.split, "image_size": args.image_size, "data_dir": args.data_dir,
            "batch_size": args.batch_size, "fl": args.fl, "local_steps": args.local_steps, "local_lr": args.local_lr,
            "clients": args.clients, "defense": defense, "train_size": args.train_size, "epochs": args.epochs,
            "targets": args.targets, "iterations": args.iterations, "prior": args.prior, "stronger": args.stronger,
            "utility": args.utility, "seed": args.seed, "set": list(args.set), "fail_above": fail}


def parse_threshold(text: str) -> tuple[str, float]:
    metric, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or metric not in FAIL_METRICS or number is None or not np.isfinite(number):
        raise AuditError(f"--fail-above {text!r}: expected METRIC=NUMBER with METRIC one of {', '.join(FAIL_METRICS)}")
    if metric == "recognisable" and not 0 <= number <= 1:
        raise AuditError(f"--fail-above recognisable is a share in [0, 1], got {number:g}")
    return metric, number


def declared_family(defense: dict) -> str | None:
    """The first registered defense the setup turns on (the one whose stronger settings are tried)."""
    from gipip_jax import defenses

    setting = defenses.parse(defense)
    on = [e["name"] for e in (*setting.updates, *setting.steps)]
    return next((name for name in defenses.REGISTRY if name in on), None)


def stronger_settings(setup: dict) -> dict[str, list[dict]]:
    """{defense name: [flat settings]} the "what would help" table tries: the next `stronger` settings
    of the declared defense (other declared fields kept), or of UNDEFENDED_OPTIONS when none is on."""
    from gipip_jax import defenses, strongest

    if not setup["stronger"]:
        return {}
    family = declared_family(setup["defense"])
    if family is None:
        out = {name: defenses.REGISTRY[name].stronger({"name": name, **defenses.REGISTRY[name].fields})
               [:setup["stronger"]] for name in UNDEFENDED_OPTIONS}
    else:
        entry = {"name": family, **defenses.parse(setup["defense"]).fields}
        out = {family: [{**setup["defense"], **s} for s in defenses.REGISTRY[family].stronger(entry)[:setup["stronger"]]]}
    out = {name: group for name, group in out.items() if group}   # a declared setting at the top of its ladder
    least = least_leaking()
    if least is not None and strongest.defense_key(least) not in {strongest.defense_key(s) for group in out.values() for s in group} \
            | {strongest.defense_key(setup["defense"])}:
        out["least_leaking"] = [least]
    return out


def least_leaking() -> dict | None:
    """The flat setting of the defense study's least-leaking defense at LEAST_LEAKING_BUDGET points
    (strongest suite, oracle-free), or None while that study has not published its verdicts."""
    from gipip_jax import assembly

    path = assembly.resolve_path(DEFENSE_VERDICTS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        found = [v for v in json.load(f) if v["budget"] == LEAST_LEAKING_BUDGET and v["suite"] == "oracle_free"]
    return found[0]["setting"] if found else None



def prior_path(setup: dict, image_shape) -> str:
    """The AE checkpoint GI-PIP uses, or "" (no GI-PIP arm)."""
    if setup["prior"] == "none":
        return ""
    if setup["prior"] != "auto":
        return setup["prior"]
    return SHIPPED_PRIOR if tuple(image_shape) == (32, 32, 3) else ""


def study_fields(setup: dict, settings: list[dict], *, prior: str, gipip: bool) -> dict:
    """Dotted study-config fields of one audit study: `settings` (flat defense settings, differing in
    one field at most) on the setup's targets, with IG (+ GI-PIP when `gipip` and a prior), ignorant
    and, where a setting turns a defense on, defense-aware. Every study names the prior, so targets
    from the AE's own split skip its auxiliary images in every study alike."""
    from gipip_jax import defenses, study

    aware = any(defenses.parse(s).updates or defenses.parse(s).steps for s in settings)
    bs = setup["batch_size"]
    fields = {"seed": setup["seed"], "data.name": setup["data"], "data.split": setup["split"],
              "data.image_size": setup["image_size"], "data.data_dir": setup["data_dir"],
              "targets.starts": list(range(setup["targets"])), "targets.batch_size": bs,
              "victim.name": setup["model"], "victim.checkpoint": setup["checkpoint"], "victim.init": setup["init"],
              "victim.init_seed": setup["init_seed"], "prior.checkpoint": prior,
              "attack.iterations": setup["iterations"], "attack.signed": SIGNED_STEPS,
              "attack.labels": "idlg" if bs == 1 else "bias_count",
              "threat.kind": setup["fl"], "threat.local_steps": setup["local_steps"],
              "threat.local_lr": setup["local_lr"], "threat.clients": setup["clients"],
              "grid.tv_weight": [TV_WEIGHTS.get(bs, 1e-5)], "grid.as_weight": [0.0, AS_WEIGHT] if gipip and prior else [0.0],
              "grid.adaptive": [False, True] if aware else [False],
              **study.defense_grid(settings)}
    for assignment in setup["set"]:
        key, _, text = assignment.partition("=")
        fields[key] = configs.parse_value(text)
    return fields


def steps_signed(setup: dict) -> bool:
    """Whether the audit's attacks take signed Adam steps (SIGNED_STEPS unless `--set attack.signed=False`)."""
    return bool(study_fields(setup, [setup["defense"]], prior="", gipip=False)["attack.signed"])


def run(setup: dict, workdir: str) -> dict:
    """Runs (or resumes) every study of the audit, the utility runs when asked, and writes the report;
    returns the summary (also W/audit.json's "summary")."""
    from gipip_jax import assembly, experiment, results
    from gipip_jax.workdir import write_text

    os.makedirs(workdir, exist_ok=True)
    manifest_path = os.path.join(workdir, "audit.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            held = json.load(f)["setup"]
        changed = sorted(k for k in setup if k not in RERUN_FREE and held.get(k) != setup[k])
        if changed:
            raise AuditError(f"{workdir} holds an audit of another setup (differs in {', '.join(changed)}); "
                             "use a new --workdir")
    config = experiment.configured(experiment.STUDY_CONFIG, study_fields(setup, [setup["defense"]], prior="",
                                                                       gipip=False))
    image_shape = assembly.load_dataset(config.data, setup["split"]).info.image_shape
    prior = prior_path(setup, image_shape)
    write_text(manifest_path, json.dumps({"setup": setup}, indent=2))
    try:
        studies = {"declared": experiment.run_study(workdir, "declared", study_fields(
            setup, [setup["defense"]], prior=prior, gipip=True))}
    except Exception:   # bad input met building the first study (the model, a checkpoint): nothing of it is kept
        if not os.path.exists(results.records_path(experiment.study_dir(workdir, "declared"))):
            os.remove(manifest_path)
        raise
    for name, settings in stronger_settings(setup).items():
        studies[f"stronger_{name}"] = experiment.run_study(workdir, f"stronger_{name}", study_fields(
            setup, settings, prior=prior, gipip=False))
    costs = measure_utility(setup, workdir) if setup["utility"] else {}
    summary = summarize_audit(setup, studies, costs, prior)
    write_text(manifest_path, json.dumps({"setup": setup, "summary": summary}, indent=2, default=float))
    write_report(setup, workdir, studies, summary)
    return summary


def measure_utility(setup: dict, workdir: str) -> dict[str, dict]:
    """{defense key: utility record} of the undefended, declared and stronger settings, trained by
    the `--utility` config on the audit's data and model (cached in W/utility/utility.json)."""
    from gipip_jax import strongest, utility

    settings = [{}, setup["defense"], *[s for group in stronger_settings(setup).values() for s in group]]
    records = utility.run(utility_config(setup, settings), os.path.join(workdir, "utility"))
    return {strongest.defense_key(r["defense"]): r for r in records}


def utility_config(setup: dict, settings: list[dict]):
    """The --utility config on the audit's data and model with `settings`, schema-checked."""
    from gipip_jax import experiment

    return experiment.configured(setup["utility"], {"data.name": setup["data"], "data.image_size": setup["image_size"],
                                                    "data.data_dir": setup["data_dir"], "victim.name": setup["model"],
                                                    "victim.init": setup["init"], "settings": settings})


def leakage_cells(study_dir: str) -> dict[str, dict]:
    """{defense key: per target, the oracle-free and oracle picks' per-image PSNR / LPIPS, label
    accuracy, and the picked records; the suite's arms; every candidate's defense-aware matching value
    (strongest.rescore), by attack id} of a finished audit study."""
    from gipip_jax import strongest
    from gipip_jax.results import ok_records

    records = ok_records(study_dir)
    scores = strongest.rescore(study_dir, records)
    picks = strongest.strongest(records, scores)
    cells: dict[str, dict] = {}
    for (key, _), chosen in sorted(picks["oracle_free"].items()):
        cell = cells.setdefault(key, {"records": [], "oracle": [], "suite": set(), "scores": {}})
        cell["records"].append(chosen)
    for (key, _), chosen in sorted(picks["oracle"].items()):
        cells[key]["oracle"].append(chosen)
    for r in records:
        cell = cells[strongest.defense_key(r["setting"])]
        cell["suite"].add(arm_name(r))
        cell["scores"][r["attack_id"]] = scores[r["attack_id"]]
    return cells


def arm_name(record: dict) -> str:
    """"declared:ig", "declared:gipip (defense-aware)", ..."""
    return record["attack"] + (" (defense-aware)" if record["setting"].get("adaptive") else "")


def leakage(cell: dict) -> dict:
    """Headline numbers of one defense setting's picks: images, recognisable count, median PSNR with
    its 95 % CI (paired.bootstrap_median_ci: over targets), worst-case PSNR, the oracle's
    median, labels recovered (or "given"), share of targets picked from the defense-aware arm, the
    arms of the suite, the picked attack ids (one per target, in target order) and every candidate's
    defense-aware matching value by attack id ("scores": per target the pick is the lowest, so the
    picks can be checked from audit.json and the records alone)."""
    from gipip_jax import paired, strongest

    psnr = np.asarray([r["per_image"]["psnr"] for r in cell["records"]], float)
    lpips = np.asarray([r["per_image"].get("lpips", [np.inf] * psnr.shape[1]) for r in cell["records"]], float)
    recognisable = (psnr >= strongest.RECOGNISABLE_PSNR) | (lpips <= RECOGNISABLE_LPIPS)
    oracle = np.asarray([r["per_image"]["psnr"] for r in cell["oracle"]], float)
    given = cell["records"][0].get("label_source") == "given"
    return {"images": int(psnr.size), "recognisable": int(recognisable.sum()), "median_psnr": float(np.median(psnr)),
            "median_ci": paired.bootstrap_median_ci(psnr), "max_psnr": float(psnr.max()),
            "oracle_median_psnr": float(np.median(oracle)),
            "labels": "given" if given else int(round(sum(r["label_accuracy"] * r["batch_size"] for r in cell["records"]))),
            "aware_share": float(np.mean([bool(r["setting"].get("adaptive")) for r in cell["records"]])),
            "suite": sorted(cell["suite"]), "picked": [r["attack_id"] for r in cell["records"]],
            "scores": {str(i): cell["scores"][i] for i in sorted(cell["scores"])}}


def summarize_audit(setup: dict, studies: dict[str, str], costs: dict[str, dict], prior: str) -> dict:
    """The numbers the report and --fail-above read: the declared setting's leakage and one row per
    stronger setting."""
    from gipip_jax import results, strongest

    declared_key = strongest.defense_key(setup["defense"])
    rows = []
    for name, folder in studies.items():
        for key, cell in leakage_cells(folder).items():
            row = {"study": name, "defense": json.loads(key), **leakage(cell)}
            undefended, own = costs.get(strongest.defense_key({})), costs.get(key)
            row["accuracy"] = None if own is None else own["eval_acc"]
            row["accuracy_drop"] = None if own is None or undefended is None else undefended["eval_acc"] - own["eval_acc"]
            row["dp_epsilon"] = dp_epsilon(setup, json.loads(key))   # the user's training, not the utility run's
            rows.append(row)
    declared = next((r for r in rows if r["study"] == "declared" and strongest.defense_key(r["defense"]) == declared_key),
                    None)
    if declared is None:
        raise AuditError(f"no attack on the declared setup ended ok (see {results.records_path(studies['declared'])})")
    return {"declared": declared, "stronger": [r for r in rows if r is not declared], "gipip": bool(prior),
            "prior": prior}


def dp_epsilon(setup: dict, defense: dict) -> float | None:
    """DP-SGD's eps at DELTA for the setup's training (--train-size, --epochs), or None."""
    from gipip_jax import privacy

    if not defense.get("dp_clip_norm") or not defense.get("dp_noise_multiplier"):
        return None
    if not setup["train_size"] or not setup["epochs"]:
        return None
    q = min(1.0, setup["batch_size"] / setup["train_size"])
    return privacy.dp_sgd_epsilon(defense["dp_noise_multiplier"], q, setup["epochs"] * setup["train_size"]
                                  // setup["batch_size"], DELTA)


def headline(summary: dict) -> str:
    from gipip_jax import strongest

    d = summary["declared"]
    low, high = d["median_ci"]
    labels = "labels given" if d["labels"] == "given" else f"labels recovered {d['labels']}/{d['images']}"
    return (f"Worst case: {d['recognisable']} of {d['images']} images recognisable (PSNR ≥ {strongest.RECOGNISABLE_PSNR:g} dB "
            f"or LPIPS ≤ {RECOGNISABLE_LPIPS:g}); median PSNR {d['median_psnr']:.1f} dB [95 % CI {low:.1f}, "
            f"{high:.1f}]; best image {d['max_psnr']:.1f} dB; {labels}.")


def threat_paragraph(setup: dict) -> str:
    from gipip_jax import defenses

    bs, fl = setup["batch_size"], setup["fl"]
    update = (f"the gradient of the model's loss on one batch of {bs} image(s) (FedSGD)" if fl == "fedsgd" else
              f"the weight change after {setup['local_steps']} local step(s) at learning rate {setup['local_lr']:g} "
              f"on a batch of {bs} image(s) (FedAvg)")
    if setup["clients"] > 1:
        update += f", summed over {setup['clients']} clients by secure aggregation"
    weights = f"the trained weights in {setup['checkpoint']}" if setup["checkpoint"] else \
        f"the weights at the first round (untrained, {setup['init']} init, seed {setup['init_seed']})"
    on = [e for e in (*defenses.parse(setup["defense"]).updates, *defenses.parse(setup["defense"]).steps)]
    knows = "; ".join(f"{e['name']}: {defenses.REGISTRY[e['name']].attacker.knows}" for e in on
                      if defenses.REGISTRY[e["name"]].attacker)
    defense = (f"Under the declared defense ({defenses.describe(setup['defense'])}) it runs the "
               f"attack both unaware of the defense and knowing it ({knows})." if on else "No defense is declared.")
    return (f"An honest-but-curious server sees each round's shared update: {update}. It knows the model's "
            f"architecture ({setup['model']}) and {weights}, and the batch size; it recovers the labels from "
            f"the update ({'iDLG' if bs == 1 else 'bias_count'}) and then optimises images whose update matches "
            f"the shared one. {defense} It never sees the images.")


def worst_cases(picked: list[int], study_dir: str, path: str) -> str | None:
    """PNG of the WORST_SHOWN most-leaked images of the declared setting's picks (attack ids, the
    summary's "picked"): ground truth above reconstruction, each column titled with its PSNR; returns
    the caption, or None without images."""
    from gipip_jax import report
    from gipip_jax.report_plots import save_labelled_grid
    from gipip_jax.results import ok_records, read_reconstructions

    records = {r["attack_id"]: r for r in ok_records(study_dir)}   # one attack id per restart
    images = read_reconstructions(study_dir)
    found = []
    for r in (records[i] for i in picked):
        if r["attack_id"] in images:
            truth = report.ground_truth(r)
            reconstructed = images[r["attack_id"]][np.asarray(r["per_image"]["order"])]
            found += [(p, truth[i], reconstructed[i]) for i, p in enumerate(r["per_image"]["psnr"])]
    if not found:
        return None
    found.sort(key=lambda item: -item[0])
    shown = found[:WORST_SHOWN]
    save_labelled_grid(path, [("ground truth", np.stack([t for _, t, _ in shown])),
                              ("reconstruction", np.stack([x for _, _, x in shown]))])
    return ("The most leaked images (strongest attack picked without the ground truth), PSNR "
            + ", ".join(f"{p:.1f}" for p, _, _ in shown) + " dB")


def write_report(setup: dict, workdir: str, studies: dict[str, str], summary: dict) -> dict:
    """W/report.md and W/report.html (+ W/report/worst_cases.png); returns their paths."""
    from gipip_jax import defenses, paired, report, strongest
    from gipip_jax.workdir import write_text

    folder = os.path.join(workdir, "report")
    os.makedirs(folder, exist_ok=True)
    d = summary["declared"]
    blocks = [("h1", f"Leakage audit: {setup['model']} on {setup['data']}, batch size {setup['batch_size']}, "
                     f"defense {defenses.describe(setup['defense'])}"),
              ("p", headline(summary)),
              ("p", f"Recognisable: PSNR ≥ {strongest.RECOGNISABLE_PSNR:g} dB or AlexNet-LPIPS ≤ {RECOGNISABLE_LPIPS:g}, "
                    "the values of a CIFAR-10 image under Gaussian noise of std 0.1 — noisy but recognisable (README, "
                    "\"Reading the metrics\"). Per target the strongest reconstruction is picked without the ground "
                    "truth (lowest defense-aware matching); picked by PSNR instead (an upper bound that needs the "
                    f"images) the median is {d['oracle_median_psnr']:.1f} dB. Median CI: percentile bootstrap over "
                    f"targets, {paired.RESAMPLES:,} resamples, seed {paired.SEED}."),
              ("h2", "Threat model"), ("p", threat_paragraph(setup)),
              ("p", "Attacks: " + ", ".join(d["suite"]) + f"; {setup['iterations']} iterations of "
                    f"{'signed' if steps_signed(setup) else 'unsigned'} Adam steps, {setup['targets']} "
                    f"batches of {setup['batch_size']} from {setup['data']} {setup['split']}"
                    + ("" if summary["gipip"] else "; GI-PIP not run: no AE prior fits these images (--prior)") + ".")]
    eps = d["dp_epsilon"]
    if defenses.parse(setup["defense"]).fields["dp_clip_norm"]:
        blocks.append(("p", f"DP-SGD: ε = {eps:.3g} at δ = {DELTA:g} (RDP accountant, Poisson sampling assumed)"
                       if eps is not None else "DP-SGD: ε not computed; pass --train-size and --epochs."))
    caption = worst_cases(d["picked"], studies["declared"], os.path.join(folder, "worst_cases.png"))
    blocks.append(("h2", "Worst cases"))
    blocks.append(("img", (caption, "report/worst_cases.png")) if caption else
                  ("p", "No reconstructions beside the records."))
    header = ["defense", "recognisable", "median PSNR [95 % CI]", "worst-case PSNR", "picked defense-aware",
              "accuracy cost (points)", "DP ε"]
    rows = []
    for row in [d, *summary["stronger"]]:
        low, high = row["median_ci"]
        cost = "not measured" if row["accuracy"] is None else (
            f"{100 * row['accuracy_drop']:+.1f}" if row["accuracy_drop"] is not None else f"accuracy {row['accuracy']:.3f}")
        note = " (yours)" if row is d else (f" (least leaking at {LEAST_LEAKING_BUDGET:g} points in the defense study)"
                                            if row["study"] == "stronger_least_leaking" else "")
        rows.append([defenses.describe(row["defense"]) + note,
                     f"{row['recognisable']}/{row['images']}", f"{row['median_psnr']:.1f} [{low:.1f}, {high:.1f}]",
                     f"{row['max_psnr']:.1f}", f"{100 * row['aware_share']:.0f} %", cost,
                     "" if row["dp_epsilon"] is None else f"{row['dp_epsilon']:.3g}"])
    cost_source = (f"Accuracy cost: the undefended test accuracy minus the setting's, in points, from the "
                   f"--utility config ({setup['utility']})." if setup["utility"] else
                   "Accuracy cost not measured: pass --utility CONFIG (a `gipip-jax utility` config) to train the "
                   "model under each setting.")
    blocks += [("h2", "What would help"), ("table", (header, rows)),
               ("p", "Stronger settings are attacked by IG, unaware and aware of the defense (the declared setting "
                     "by the whole suite). " + cost_source)]
    paths = {"markdown": os.path.join(workdir, "report.md"), "html": os.path.join(workdir, "report.html")}
    write_text(paths["markdown"], report.markdown_page(blocks))
    write_text(paths["html"], report.html_page(blocks[0][1], blocks))
    return paths


def exceeded(summary: dict, threshold: tuple[str, float]) -> str | None:
    """The --fail-above message when the declared setup leaks more than `threshold`, else None."""
    metric, limit = threshold
    d = summary["declared"]
    value = d["recognisable"] / d["images"] if metric == "recognisable" else d[metric]
    if value > limit:
        return f"{FAIL_METRICS[metric]} {value:.3g} is above --fail-above {metric}={limit:g}"
    return None


def main(args: argparse.Namespace) -> int:
    """Runs the audit of the parsed flags; 0, or 1 when --fail-above is exceeded."""
    from gipip_jax import workdir as work

    setup = setup_of(args)
    os.makedirs(args.workdir, exist_ok=True)
    with work.held(args.workdir), work.interruptible():
        summary = run(setup, args.workdir)
    print(headline(summary))
    print(f"report: {os.path.join(args.workdir, 'report.md')}, {os.path.join(args.workdir, 'report.html')}")
    message = exceeded(summary, setup["fail_above"]) if setup["fail_above"] else None
    if message:
        print(f"gipip-jax: audit: {message}", file=sys.stderr)
        return 1
    return 0
