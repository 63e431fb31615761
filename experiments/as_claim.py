"""Does the AS prior help? GI-PIP's central claim at the authors' protocol and budget (issue 14).

Every part attacks the same targets with and without the anomaly-score prior and compares them per
target (paired ΔPSNR / ΔSSIM with a 95 % percentile bootstrap CI, 10,000 resamples, seed 0, and a
Wilcoxon signed-rank p-value, medians and the share of failed reconstructions, < 15 dB, in the report),
with the authors' protocol: targets drawn from the TRAIN split (skipping the AE's auxiliary images)
with distinct labels in a batch and disjoint batches, victims with PyTorch's default initialization
(`victim.init=torch`), untrained, Adam 0.1 unsigned with the step schedule, c = 0.001 at 32 px (0.002
at 64 px), given labels. Restart selection by the matching term is set, but every variant runs 1
restart, so it selects nothing. Each record carries a trace (20 points: objective terms, each term's
weighted gradient norm, PSNR), so the report shows AS's share of the step's gradient over the run.

    python experiments/as_claim.py VARIANT [WORKDIR]      (default WORKDIR runs/as_claim_VARIANT)

Parts of the `cpu` variant (CIFAR-10 32 px, 10,000 iterations; run in this order, each resumable):
  a  resnet_bs1        the authors' CIFAR-10 protocol exactly: CIFAR ResNet-18, bs 1, λ_TV 1e-6,
                       λ_AS in {0, 1e-6}, reference-recipe AE (BCE, Adadelta 0.1, 100 epochs), 8 targets
  b  convnet_bs1       the tail hypothesis on the ConvNet: bs 1, λ_TV 1e-6, λ_AS in {0, 1e-4, 1e-2, 1e-1},
                       reference AE, 16 targets
  b  convnet_bs4       the same at bs 4 (λ_TV 1e-5), 16 disjoint batches
  c  convnet_bs4_mse   another AE: the bs-4 arms where AS carries a real share of the gradient, λ_AS 1e-2
                       and 1e-1, with the MSE/Adam AE (MSE, Adam 1e-3, 150 epochs; it differs from the
                       reference AE in loss, optimizer, epochs and held-out error at once, so this part
                       cannot say which of those matters). Its IG arm would be convnet_bs4's, same targets
                       and keys, so it is not run twice; at λ_AS 1e-4 the prior carries ~1e-3 of the
                       matching gradient at bs 4, too little, we expect, for any AE to show
  d  convnet_bs4_mse_confirm   a confirmation of c's gain, fixed before it ran (c's comparison against IG
                       was chosen after 12 of its 16 batches): 8 fresh disjoint batches (numbers 16-23,
                       none seen by b or c), IG against the MSE/Adam AE at λ_AS 1e-1 and nothing else.
                       Primary endpoint: mean ΔPSNR against IG with its 95 % bootstrap CI; the gain is
                       confirmed if that CI lies above 0 (and the Wilcoxon p < 0.05), refuted otherwise.
Reports: W/report.md (every part's λ_AS arms against its IG arm), W/ae_convnet_bs4_mse/report.md
(part c: each MSE-AE arm against b's reference-AE arm of the same λ_AS, paired per target batch) and
W/ae_convnet_bs4_mse_vs_ig/report.md (part c: both AEs' arms of those λ_AS against b's IG arm).
Runtime on the 2-core CPU, measured: a ~4 h (~11 attack-steps/s), b bs 1 ~3.1 h (~58–76), b bs 4
~26–43 min a wave of 4 attacks (~15–27 attack-steps/s alone, by machine; 16 waves 7–11 h), c ~27–70
min a wave of 4 (~9.5–29 attack-steps/s, by machine; 8 waves 3.6–9.3 h), d ~28 min a wave of 4
(~23 attack-steps/s; 4 waves ~2 h): a multi-session run; kill it at any time and rerun the same
command to resume.

Variants:
  smoke  tiny victim, 16 px CIFAR-10, bs 2 with either AE, 2 targets, 20 iterations, AEs trained 20 steps:
         ~3 min on the 2-core CPU (tested in CI)
  cpu    the parts above
  full   64 px Tiny-ImageNet, ResNet-18 (torch init), 48,000 iterations, bs 1 (λ_TV 1e-6, λ_AS {0, 1e-6})
         and bs 4 (λ_TV 5e-4, λ_AS {0, 1e-4}), 8 targets each, reference-recipe AE on 3.8 % of the
         Tiny-ImageNet train subset: one command for a GPU (not run yet: no GPU lent)
"""

from __future__ import annotations

import os
import sys

from gipip_jax import experiment

REFERENCE_AE = "experiments/checkpoints/ae_cifar10_aux5_reference"   # BCE, Adadelta 0.1, 100 epochs
MSE_AE = "experiments/checkpoints/ae_cifar10_aux5"                   # MSE, Adam 1e-3, 150 epochs
PART = dict  # one study: label, victim, batch size, λ_TV, λ_AS grid, targets (and the first batch number,
#              `first`, default 0), prior ("reference" | "mse"), and for an MSE-AE part the reference-AE part it
#              is compared with arm by arm (`against`)

VARIANTS = {
    "smoke": dict(dataset="cifar10", image_size=16, iterations=20, lpips=None, prior_steps=20, parts=[
        PART(name="tiny_bs2", victim="convnet_tiny", batch_size=2, tv=1e-5, as_weights=[0.0, 1e-2], targets=2,
             prior="reference"),
        PART(name="tiny_bs2_mse", victim="convnet_tiny", batch_size=2, tv=1e-5, as_weights=[1e-2], targets=2,
             prior="mse", against="tiny_bs2")],
        engine={"engine.strategy": "vmap_patches", "engine.attacks_per_device": 2, "engine.chunk_size": 5,
                "engine.checkpoint_every": 10}),
    "cpu": dict(dataset="cifar10", image_size=None, iterations=10_000, lpips="alexnet", parts=[
        PART(name="resnet_bs1", victim="resnet18", batch_size=1, tv=1e-6, as_weights=[0.0, 1e-6], targets=8,
             prior="reference", engine={"engine.strategy": "vmap_patches", "engine.attacks_per_device": 2}),
        PART(name="convnet_bs1", victim="convnet", batch_size=1, tv=1e-6, as_weights=[0.0, 1e-4, 1e-2, 1e-1],
             targets=16, prior="reference"),
        PART(name="convnet_bs4", victim="convnet", batch_size=4, tv=1e-5, as_weights=[0.0, 1e-4, 1e-2, 1e-1],
             targets=16, prior="reference"),
        PART(name="convnet_bs4_mse", victim="convnet", batch_size=4, tv=1e-5, as_weights=[1e-2, 1e-1],
             targets=16, prior="mse", against="convnet_bs4"),
        PART(name="convnet_bs4_mse_confirm", victim="convnet", batch_size=4, tv=1e-5, as_weights=[0.0, 1e-1],
             targets=8, first=16, prior="mse")],
        engine={"engine.strategy": "vmap_patches", "engine.attacks_per_device": 4, "engine.chunk_size": 50,
                "engine.checkpoint_every": 500}),
    "full": dict(dataset="tiny_imagenet", image_size=None, iterations=48_000, lpips="alexnet", prior_steps=20_000,
                 parts=[PART(name="resnet_bs1_64px", victim="resnet18", batch_size=1, tv=1e-6, as_weights=[0.0, 1e-6],
                             targets=8, prior="reference"),
                        PART(name="resnet_bs4_64px", victim="resnet18", batch_size=4, tv=5e-4, as_weights=[0.0, 1e-4],
                             targets=8, prior="reference")],
                 engine={"engine.chunk_size": 200, "engine.checkpoint_every": 2000}),
}


def priors(name: str, v: dict, workdir: str) -> dict:
    """{"reference": path, "mse": path}: the shipped CIFAR-10 AEs for `cpu`, else trained in WORKDIR."""
    if name == "cpu":
        return {"reference": REFERENCE_AE, "mse": MSE_AE}
    fraction = 0.038 if v["dataset"] == "tiny_imagenet" else 0.05
    return {kind: experiment.train_prior(workdir, f"{v['dataset']}_{kind}", dataset=v["dataset"],
                                         image_size=v["image_size"], steps=v["prior_steps"], fraction=fraction,
                                         heldout_count=experiment.heldout_count(name), recipe=recipe)
            for kind, recipe in (("reference", "bce_adadelta"), ("mse", "mse_adam"))}


def run(name: str, workdir: str) -> dict:
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    paths = priors(name, v, workdir)
    notes = []
    for kind, path in paths.items():
        meta = experiment.prior_metadata(path)
        notes.append(f"AE '{kind}' ({path}): recipe {meta.get('recipe')}, {meta.get('epochs')} epochs on "
                     f"{meta['aux_count']} {meta['dataset']} train images, held-out MSE "
                     f"{meta.get('heldout_mse', float('nan')):.4f}, c = {meta['as_offset']}")
    studies = []
    for part in v["parts"]:
        first = part.get("first", 0)
        fields = {"data.name": v["dataset"], "data.split": "train", "data.image_size": v["image_size"],
                  "targets.starts": list(range(first, first + part["targets"])),
                  "targets.batch_size": part["batch_size"], "victim.name": part["victim"], "victim.init": "torch",
                  "attack.iterations": v["iterations"],
                  "attack.restart_selection": "matching", "grid.tv_weight": [part["tv"]],
                  "grid.as_weight": part["as_weights"], "prior.checkpoint": paths[part["prior"]],
                  "metrics.lpips_net": v["lpips"], **v["engine"], **part.get("engine", {})}
        experiment.run_study(workdir, part["name"], fields)
        studies.append({"dir": f"studies/{part['name']}", "x": part["name"]})
    manifest = {
        "title": f"Does the AS prior help? GI-PIP vs IG at the authors' protocol ({name})",
        "description": f"{v['dataset']} train targets (AE auxiliary images skipped), untrained victims with "
                       f"PyTorch's init, {v['iterations']} iterations, c from the AE; per part, every λ_AS arm "
                       "against the λ_AS = 0 arm (IG) on the same targets.",
        "command": f"python experiments/as_claim.py {name} {workdir}",
        "x_label": "part", "baseline": "IG", "studies": studies, "notes": notes,
    }
    paths = experiment.finish(workdir, manifest)
    for part in v["parts"]:
        if "against" in part:
            compare_priors(name, workdir, part, notes)
    return paths


def compare_priors(name: str, workdir: str, part: dict, notes: list[str]) -> None:
    """Reports W/ae_PART/: the MSE-AE part's λ_AS arms against the reference-AE part's arms of the same
    λ_AS on the same targets (and the reference part's other arms, IG among them, for context); and
    W/ae_PART_vs_ig/: both AEs' arms of those λ_AS against the reference part's IG arm (λ_AS = 0)."""
    weights = [w for w in part["as_weights"] if w]
    reports = {
        f"ae_{part['name']}": dict(
            title=f"Does the AE matter? {part['name']}: the MSE/Adam AE against the reference-recipe AE ({name})",
            description=f"The same targets, keys and λ_AS arms, attacked with either AE; every arm of "
                        f"{part['name']} against the arm of {part['against']} with the same λ_AS.",
            baseline="reference AE",
            studies=[{"dir": f"../studies/{part['against']}", "series": "reference AE"},
                     {"dir": f"../studies/{part['name']}", "series": "MSE AE"}]),
        f"ae_{part['name']}_vs_ig": dict(
            title=f"Does AS help with either AE? {part['name']} and {part['against']} against IG ({name})",
            description=f"The same targets and keys; the λ_AS arms of {part['against']} (reference AE) and "
                        f"{part['name']} (MSE AE) against {part['against']}'s λ_AS = 0 arm (IG).",
            baseline="IG",
            studies=[{"dir": f"../studies/{part['against']}", "series": "IG", "where": {"as_weight": [0.0]}},
                     {"dir": f"../studies/{part['against']}", "series": "reference AE",
                      "where": {"as_weight": weights}},
                     {"dir": f"../studies/{part['name']}", "series": "MSE AE"}]),
    }
    for folder, manifest in reports.items():
        manifest.update(command=f"python experiments/as_claim.py {name} {workdir}", x_label="λ_AS",
                        x_field="as_weight", notes=notes)
        os.makedirs(os.path.join(workdir, folder), exist_ok=True)
        experiment.finish(os.path.join(workdir, folder), manifest)


if __name__ == "__main__":
    sys.exit(experiment.main(run, __doc__, "as_claim", sys.argv[1:]))
