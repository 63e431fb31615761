"""The three learned-prior families at equal auxiliary data, on the same targets (issue 31, part 1):
Learning to Invert (a network from the update to the image), GI-PIP (an AE's anomaly score) and a GAN
prior, next to Inverting Gradients. Design fixed before its first attack (amended before it, see below).

    python experiments/three_priors.py VARIANT [WORKDIR]      (default WORKDIR runs/three_priors_VARIANT)

Setting: the untrained ConvNet (Flax init, seed 0: the victim the LTI network is trained for), FedSGD,
bs 1, no defense, given labels; CIFAR-10 TEST images, batch numbers 0–15 of the unique-label partition
(never auxiliary images, which come from train), the same keys for every arm. Every prior learns from
the same auxiliary images: 5 % of CIFAR-10 train (the 2,500 images of the shipped AE and GAN,
experiments/configs/ae_cifar10.py) in `cpu`; all of train but 1,000 held out (LTI's own amount) in
`full`, where the AE and the GAN are trained on that too.

Arms (one study each, W/studies/NAME); the pixel arms take Inverting Gradients' signed Adam steps:
  ig       cosine + TV 1e-6, signed Adam 0.1, step schedule, ITER iterations
  gipip    the same + AS with the MSE/Adam AE, λ_AS 1e-2 (the bs-1 weight where AS carries a real share
           of the step: as_claim part b)
  gan      the GAN prior (latent, then generator-weight search; its own unsigned Adam), ITER iterations
  lti      the LTI network's output alone (0 iterations)
  lti_ig   LTI's output, then ITER iterations of IG from it
  ig_half  IG at ITER / 2 iterations: the convergence check (W/convergence.md pairs ig with it), since
           an unconverged IG would hand LTI's warm start an easy gain
PRIMARY ENDPOINT: per arm, paired ΔPSNR against IG over the 16 targets, 95 % percentile bootstrap CI
(10,000 resamples, seed 0), Wilcoxon p with Holm over the 4 arms (W/report.md, baseline IG); beside it
SSIM, LPIPS and the image grid. ig_half is not an arm of the comparison (W/convergence.md only).

Amendment (before any attack of this study): the first design took GI-PIP's unsigned Adam steps at
ITER 2,000. On the defense study's ConvNet at bs 1 (16 CIFAR-10 targets, experiments/results/defenses/
budget_pilot) that budget left the undefended IG 4.85 dB [2.79, 6.92] below 10,000 iterations, while
signed steps at 4,000 came within −0.27 dB [−1.08, +0.54]; so ITER is 4,000 with signed steps, and
the half-budget arm checks convergence on this study's own victim and targets.

Amendment 2 (2026-12-07, before any attack of this study; the `cpu` variant's LTI network was training):
the issue also asks for LTI at its own auxiliary amount, all of train, which `full` covers on a GPU
only. Variant `cpu_all` adds it at CPU scale as a study of its own (its own W, report and Holm family,
so the `cpu` comparison above is unchanged): IG, LTI alone and LTI + IG on the same 16 targets and keys,
the LTI network trained on all of train but the 1,000 held out (inverter_cifar10.py:cpu_all: the `cpu`
network and optimizer, 6 epochs of 49,000 updates, 1,146 steps against `cpu`'s 270). It is not an
equal-data comparison: the AE and the GAN stay at 5 % (training them on all of train is `full`'s).
PRIMARY ENDPOINT of `cpu_all`: LTI alone and LTI + IG against IG, paired ΔPSNR over the 16 targets, the
same CI and test, Holm over its 2 arms.

Amendment 3 (2026-12-07, after the `cpu` results, so exploratory: no verdict, not in any Holm family):
LTI's output is close to a flat grey for most targets, and LTI + IG's mean gain over IG rests on one
target (test image 15: IG 11.6 dB, LTI + IG 25.6), so that gain may come from starting at a smooth image
rather than from what the network learned. Arm ig_flat runs IG from a flat image of the normalization's
mean colour (attack.init "flat") on the same targets; W/flat_start.md pairs LTI + IG with it (what the
network's output adds over a flat start) and it with IG (what a flat start adds over N(0, 1)), each with
its 95 % bootstrap CI and Wilcoxon p. 16 x 4,000 attack-steps, ~15 min.

All three trainers draw their images with data.auxiliary_split (seed 0, the same held-out count), so
they learn from the same images in every variant.

Budget on the 2-core CPU (cpu: ITER 4,000): LTI training (inverter_cifar10.py:cpu) ~1.6 h; ig, gipip
and lti_ig 3 x 16 x 4,000 = 192k attack-steps and ig_half 32k, at ~80/s with signed steps, ~50 min;
gan 64k generator steps, ~1 h; in all ~3.4 CPU hours, resumable. `cpu_all`: LTI training ~1.4 h (`cpu`'s
network trained at 62 client updates/s on this machine, 1,235 s for its 30 epochs: ~13 min an epoch of
49,000), ig and lti_ig 128k attack-steps ~25 min; ~2 h. `full`: 10,000 iterations and the priors on all of train: for a GPU.

Variants:
  smoke  tiny victim, 32 px, 256 auxiliary images (inverter_cifar10.py:smoke; AE and GAN trained a
         few steps on the same images), 2 targets, 10 iterations (tested in CI)
  cpu    as above, ITER 4,000, the shipped AE and GAN (5 %); the engine plan pinned (vmap_patches, 4 attacks
         a wave: the defense study's), so machine load cannot change it
  cpu_all  ITER 4,000, arms ig, lti and lti_ig, the LTI network trained on all of train (amendment 2)
  full   ITER 10,000, every prior trained on all of train (not run yet: no GPU lent)
"""

from __future__ import annotations

import os
import sys

from gipip_jax import experiment, jobs
from gipip_jax.results import by_target

INVERTER_CONFIG = "experiments/configs/inverter_cifar10.py"
MSE_AE = "experiments/checkpoints/ae_cifar10_aux5"
GAN = "experiments/checkpoints/gan_cifar10_aux5"
AS_WEIGHT = 1e-2
ARMS = ("ig", "gipip", "gan", "lti", "lti_ig")
HALF_BUDGET = "ig_half"   # IG at half the iterations: W/convergence.md, not an arm of the comparison
FLAT_START = "ig_flat"    # IG from a flat image (amendment 3, exploratory): W/flat_start.md, not an arm either

VARIANTS = {
    "smoke": dict(inverter="smoke", victim="convnet_tiny", targets=2, iterations=10, lpips=None,
                  train=dict(count=256, ae_steps=16, gan_steps=4),
                  engine={"engine.strategy": "unroll", "engine.attacks_per_device": 2, "engine.chunk_size": 5,
                          "engine.checkpoint_every": 10}),
    "cpu": dict(inverter="cpu", victim="convnet", targets=16, iterations=4000, lpips="alexnet", train=None,
                engine={"engine.strategy": "vmap_patches", "engine.attacks_per_device": 4,   # pinned: the defense
                        "engine.chunk_size": 50, "engine.checkpoint_every": 500}),     # study's bs-1 plan
    "cpu_all": dict(inverter="cpu_all", victim="convnet", targets=16, iterations=4000, lpips="alexnet", train=None,
                    arms=("ig", "lti", "lti_ig"), half_budget=False,
                    title="LTI trained on all of train against IG at CPU scale (cpu_all: not an equal-data comparison)",
                    description="Untrained ConvNet (Flax init, seed 0), bs 1, no defense, given labels, CIFAR-10 test "
                                "targets; the LTI network learned from all of train but 1,000 held out; signed Adam "
                                "steps in the pixel arms (IG and LTI + IG).",
                    engine={"engine.strategy": "vmap_patches", "engine.attacks_per_device": 4,
                            "engine.chunk_size": 50, "engine.checkpoint_every": 500}),
    "full": dict(inverter="full", victim="convnet", targets=16, iterations=10_000, lpips="alexnet",
                 train=dict(fraction=1.0, ae_steps=150 * 49_000 // 16, gan_steps=40_000),
                 engine={"engine.chunk_size": 200, "engine.checkpoint_every": 2000}),
}


def priors(v: dict, workdir: str, heldout: int) -> dict[str, str]:
    """{"ae", "gan", "inverter": checkpoint}: trained on the variant's auxiliary images less `heldout`
    (the shipped AE and GAN for `cpu`); the inverter always in W/priors/inverter."""
    folder = os.path.join(workdir, "priors", "inverter")
    if not os.path.exists(os.path.join(folder, "inverter")):
        jobs.train_inverter(experiment.configured(f"{INVERTER_CONFIG}:{v['inverter']}", {}), folder)
    out = {"inverter": os.path.join(folder, "inverter")}
    t = v["train"]
    if t is None:
        return {**out, "ae": MSE_AE, "gan": GAN}
    amount = {"count": t["count"]} if "count" in t else {"fraction": t["fraction"]}
    out["ae"] = experiment.train_prior(workdir, "ae", dataset="cifar10", image_size=None, steps=t["ae_steps"],
                                       heldout_count=heldout, **amount)
    out["gan"] = experiment.train_gan(workdir, "gan", dataset="cifar10", image_size=None, steps=t["gan_steps"],
                                      heldout_count=heldout, **amount)
    return out


def arm_fields(v: dict, arm: str, paths: dict[str, str]) -> tuple[str, dict]:
    """(study config, dotted fields) of one arm (ARMS, HALF_BUDGET or FLAT_START)."""
    fields = {"data.name": "cifar10", "data.split": "test",
              "targets.starts": list(range(v["targets"])), "victim.name": v["victim"],
              "attack.iterations": v["iterations"], "attack.signed": True, "grid.tv_weight": [1e-6], "grid.as_weight": [0.0],
              "metrics.lpips_net": v["lpips"], **v["engine"]}
    if arm == "gipip":
        return experiment.STUDY_CONFIG, {**fields, "prior.checkpoint": paths["ae"], "grid.as_weight": [AS_WEIGHT]}
    if arm == "gan":   # per-attack generator weights, one attack after another (experiment.learned_prior_fields)
        pinned = experiment.learned_prior_fields(fields, v["iterations"], pinned_engine=True)
        return experiment.STUDY_GAN_CONFIG, {**pinned, "gan.checkpoint": paths["gan"], "attack.signed": False}
    if arm in ("lti", "lti_ig"):
        return "experiments/configs/study_lti_cifar10.py", {
            **fields, "inverter.checkpoint": paths["inverter"], "attack.iterations": 0 if arm == "lti" else v["iterations"]}
    if arm == HALF_BUDGET:
        return experiment.STUDY_CONFIG, {**fields, "attack.iterations": v["iterations"] // 2}
    if arm == FLAT_START:
        return experiment.STUDY_CONFIG, {**fields, "attack.init": "flat"}
    return experiment.STUDY_CONFIG, fields


def study(workdir: str, name: str) -> dict[tuple, dict]:
    """W/studies/NAME's records by target."""
    return by_target(experiment.study_records(workdir, name))


def convergence(workdir: str) -> str:
    """W/convergence.md: IG at ITER iterations paired per target with IG at half of them."""
    return experiment.write_convergence(os.path.join(workdir, "convergence.md"),
                                        [("IG, this budget vs half of it", study(workdir, "ig"), study(workdir, HALF_BUDGET))])


def flat_start(workdir: str, arms: tuple[str, ...]) -> str:
    """W/flat_start.md (amendment 3, exploratory): LTI + IG paired per target with IG from a flat image
    (when the variant has an lti_ig arm), and IG from a flat image with IG from N(0, 1)."""
    pairs = [("LTI + IG vs IG from a flat image (what the network's output adds over a flat start)",
              study(workdir, "lti_ig"), study(workdir, FLAT_START))] if "lti_ig" in arms else []
    pairs.append(("IG from a flat image vs IG from N(0, 1)", study(workdir, FLAT_START), study(workdir, "ig")))
    return experiment.write_paired(os.path.join(workdir, "flat_start.md"),
                                   "Where the pixels start (exploratory, amendment 3)", pairs, p_value=True)


def run(name: str, workdir: str) -> dict:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    paths = priors(v, workdir, experiment.heldout_count(name))
    studies, arms = [], v.get("arms", ARMS)
    for arm in arms:
        spec, fields = arm_fields(v, arm, paths)
        experiment.run_study(workdir, arm, fields, spec)
        studies.append({"dir": f"studies/{arm}", "series": "IG" if arm == "ig" else arm})
    if v.get("half_budget", True):
        spec, fields = arm_fields(v, HALF_BUDGET, paths)
        experiment.run_study(workdir, HALF_BUDGET, fields, spec)
        print(convergence(workdir))
    spec, fields = arm_fields(v, FLAT_START, paths)
    experiment.run_study(workdir, FLAT_START, fields, spec)
    print(flat_start(workdir, arms))
    notes = [f"{kind}: {path}" for kind, path in paths.items()]
    return experiment.finish(workdir, {
        "title": v.get("title", f"Three prior families at equal auxiliary data: LTI, GI-PIP, GAN prior against IG ({name})"),
        "description": v.get("description",
                             "Untrained ConvNet (Flax init, seed 0), bs 1, no defense, given labels, CIFAR-10 test "
                             "targets; every prior learned from the same auxiliary images; signed Adam steps in the "
                             "pixel arms. Convergence of IG (this budget vs half of it): convergence.md."),
        "command": f"python experiments/three_priors.py {name} {workdir}", "baseline": "IG", "x_label": "arm",
        "studies": studies, "notes": notes})


if __name__ == "__main__":
    sys.exit(experiment.main(run, __doc__, "three_priors", sys.argv[1:]))
