"""GIAS-style GAN-prior attack on real CIFAR-10 test images, as a batched study (`gipip-jax study`).

Everything as experiments/configs/study_cifar10.py (8 targets, bs 1, untrained ConvNet seed 0,
cosine + TV 1e-6, given labels), but the attack optimizes a pretrained DCGAN's input and then its
weights (attack.parameterization="gan", parameterizations.py): phase 1 Adam lr 0.1 on the latent z
for gan.latent_iterations steps (None: half of attack.iterations), phase 2 Adam lr 1e-4 on the
generator's weights (z fixed) for the rest; each phase with the step schedule. The reference
(GIAS) budget is 3,000 + 3,000 iterations. The generator was trained on the same 5 % auxiliary
split as the AE prior (experiments/configs/gan_cifar10.py; shipped in experiments/checkpoints/
gan_cifar10_aux5).

Commands, from the repository root:
  gipip-jax study --config experiments/configs/study_gan_cifar10.py:smoke --workdir runs/study_gan_smoke
      2 targets x (10 + 10) iterations, unroll x2: a few minutes on the 2-core CPU (mostly compiling;
      not timed alone)
  gipip-jax study --config experiments/configs/study_gan_cifar10.py --workdir runs/study_gan_cifar10 \
      --set "targets.starts=[0, 1, 2, 3]" --set attack.iterations=400
      the measured CPU-budget run was 200 + 200 iterations (attack.iterations=400, engine unroll x1: 20 min
      wall on the loaded 2-core CPU) in experiments/README.md
      ("Learned-prior baselines (issue 8)")
For the aux-amount experiment: train a GAN per fraction (gipip-jax train-gan --config
experiments/configs/gan_cifar10.py --workdir W_f --set aux.fraction=f), then
--set gan.checkpoint=W_f/gan; other data: --set data.name=tiny_imagenet with a GAN trained on it.
"""

import importlib.util
import os


def _study_config(arg):
    spec = importlib.util.spec_from_file_location("study_cifar10", os.path.join(os.path.dirname(__file__), "study_cifar10.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg=None):
    if arg not in (None, "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing")
    c = _study_config(arg)
    c.name = "gan_prior"
    c.attack.parameterization = "gan"
    c.attack.iterations = 6000 if arg is None else 20
    c.grid.as_weight = [0.0]
    c.grid.feature_weight = [0.0]
    c.gan = dict(checkpoint="experiments/checkpoints/gan_cifar10_aux5", latent_iterations=None,
                 latent_lr=0.1, generator_lr=1e-4)
    c.dip = dict(widths=[16, 32, 64], learning_rate=0.01, noise_channels=32, noise_std=0.1)
    if arg == "smoke":
        c.engine.strategy, c.engine.attacks_per_device = "unroll", 2
    return c
