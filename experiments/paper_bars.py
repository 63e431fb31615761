"""Claim (c): the AS gain grows with batch size, gradient noise, gradient sparsity and a trained victim.

The authors' SSIM bars (64 px ImageNet, ResNet-18, w/o AS -> w/ AS): batch size 1 .48 -> .53,
4 .27 -> .42, 16 .16 -> .29; at bs 4: gradient noise std 1e-2 .27 -> .37, sparsity 0.99 .19 -> .31,
victim trained 100 epochs .27 -> .35. Every bar here runs w/o and w/ AS on the same Tiny-ImageNet val
targets (unique labels per batch) with the authors' weights per batch size (bs 1: λ_TV 1e-6, λ_AS 1e-6;
bs 2 and 4: 5e-4, 1e-4; bs 8 and 16: 5e-4, 5e-4) and c from the AE checkpoint (0.002 at 64 px), the
AE trained on 3.8 % of the auxiliary pool (the paper's fraction).

    python experiments/paper_bars.py VARIANT [WORKDIR]      (default WORKDIR runs/paper_bars_VARIANT)

Variants (expected runtime):
  smoke  tiny victim, 16 px, bs {1, 2} and the three bs-2 conditions, 10 iterations: ~2.5 min on the
         2-core CPU (tested in CI)
  cpu    the reduced budget measured here: untrained ConvNet at 32 px (64 px ConvNet runs ~5 attack-
         steps/s on this CPU, too slow for every bar), 2 target batches per bar, 200 iterations, victim
         trained 2 epochs for the trained bar: ~30 min on a quiet 2-core CPU
  full   the authors' budget: 64 px, ResNet-18, 8 target batches, 48k iterations (80k for the
         trained-victim bar, trained 100 epochs): weeks on the CPU; on one GPU roughly a day
         (not measured: no GPU lent)
"""

from __future__ import annotations

import sys

from gipip_jax import experiment

WEIGHTS = {1: (1e-6, 1e-6), 2: (5e-4, 1e-4), 4: (5e-4, 1e-4), 8: (5e-4, 5e-4), 16: (5e-4, 5e-4)}  # (λ_TV, λ_AS)
PAPER_SSIM = {"bs 1": (0.48, 0.53), "bs 4": (0.27, 0.42), "bs 16": (0.16, 0.29), "noise 1e-2": (0.27, 0.37),
              "sparsity 0.99": (0.19, 0.31), "trained victim": (0.27, 0.35)}
VARIANTS = {
    "smoke": dict(image_size=16, batch_sizes=(1, 2), condition_bs=2, targets=1, iterations=10, victim="convnet_tiny",
                  ae_steps=20, victim_epochs=1, victim_train_count=256, lpips=None,
                  engine={"engine.strategy": "vmap_patches", "engine.attacks_per_device": 2, "engine.chunk_size": 5}),
    "cpu": dict(image_size=32, batch_sizes=(1, 2, 4, 8, 16), condition_bs=4, targets=2, iterations=200,
                victim="convnet", ae_steps=2000, victim_epochs=2, victim_train_count=0, lpips="alexnet",
                engine={"engine.strategy": "vmap_patches", "engine.attacks_per_device": 2, "engine.chunk_size": 50}),
    "full": dict(image_size=None, batch_sizes=(1, 2, 4, 8, 16), condition_bs=4, targets=8, iterations=48_000,
                 trained_iterations=80_000, victim="resnet18", ae_steps=20_000, victim_epochs=100,
                 victim_train_count=0, lpips="alexnet", engine={}),
}
CONDITIONS = {"noise 1e-2": {"grid.noise_std": [1e-2]}, "sparsity 0.99": {"grid.prune_sparsity": [0.99]}}


def run(name: str, workdir: str) -> dict:
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    prior = experiment.train_prior(workdir, "tiny_imagenet_aux3.8", dataset="tiny_imagenet",
                                   image_size=v["image_size"], fraction=0.038, steps=v["ae_steps"],
                                   heldout_count=experiment.heldout_count(name))
    meta = experiment.prior_metadata(prior)
    notes = [f"AE: {meta['aux_count']} Tiny-ImageNet train images (3.8 %), held-out MSE "
             f"{meta.get('heldout_mse', float('nan')):.4f}, c = {meta['as_offset']}"]

    def bar(label, batch_size, extra=None, iterations=None):
        tv, as_weight = WEIGHTS[batch_size]
        tag = label.replace(" ", "_").replace(".", "p")
        fields = {"data.name": "tiny_imagenet", "data.image_size": v["image_size"],
                  "targets.starts": list(range(v["targets"])), "targets.batch_size": batch_size,
                  "victim.name": v["victim"], "attack.iterations": iterations or v["iterations"],
                  "grid.tv_weight": [tv], "grid.as_weight": [0.0, as_weight], "prior.checkpoint": prior,
                  "metrics.lpips_net": v["lpips"], **v["engine"], **(extra or {})}
        experiment.run_study(workdir, tag, fields)
        return {"dir": f"studies/{tag}", "x": label}

    studies = [bar(f"bs {b}", b) for b in v["batch_sizes"]]
    cbs = v["condition_bs"]
    studies += [bar(label, cbs, extra) for label, extra in CONDITIONS.items()]
    victim = experiment.train_victim(workdir, f"{v['victim']}_e{v['victim_epochs']}", dataset="tiny_imagenet",
                                     image_size=v["image_size"], victim=v["victim"], epochs=v["victim_epochs"],
                                     train_count=v["victim_train_count"], eval_count=256 if name == "smoke" else 2000)
    studies.append(bar("trained victim", cbs, {"victim.checkpoint": victim}, v.get("trained_iterations")))
    paper = [{"series": series, "x": x, "metric": "ssim", "value": value}
             for x, pair in PAPER_SSIM.items() for series, value in zip(("w/o AS", "w/ AS"), pair)]
    manifest = {
        "title": f"The paper's bars: AS gain vs batch size, noise, sparsity, trained victim ({name})",
        "description": f"Tiny-ImageNet val targets at {v['image_size'] or 64} px, {v['victim']}, "
                       f"{v['iterations']} iterations, {v['targets']} target batch(es) per bar; conditions at "
                       f"bs {cbs}; trained victim: {v['victim_epochs']} epoch(s). Black diamonds: the "
                       "paper's SSIM (64 px, ResNet-18, 48k iterations).",
        "command": f"python experiments/paper_bars.py {name} {workdir}",
        "x_label": "bar", "series_names": {"ig": "w/o AS", "gipip": "w/ AS"}, "baseline": "w/o AS",
        "studies": studies, "paper": paper, "notes": notes,
    }
    return experiment.finish(workdir, manifest)


if __name__ == "__main__":
    sys.exit(experiment.main(run, __doc__, "paper_bars", sys.argv[1:]))
