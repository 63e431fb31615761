"""Feature matching + deep image prior (seed 002's attack) on real CIFAR-10 test images (`gipip-jax study`).

Everything as experiments/configs/study_cifar10.py (8 targets, bs 1, untrained ConvNet seed 0,
cosine + TV 1e-6, given labels), but the image is the output of an untrained U-Net
(attack.parameterization="dip", dip.py) whose weights Adam optimizes (lr dip.learning_rate with
the step schedule) from a fixed noise input drawn from the attack's key, and the objective adds
λ_feat * ||f(x) - h||^2 / ||h||^2, h the input of the victim's classification layer recovered from
the shared update (features.py: exact at bs 1). grid.feature_weight = [0, 0.1] runs the U-Net
alone and with the feature term.

Commands, from the repository root:
  gipip-jax study --config experiments/configs/study_dip_cifar10.py:smoke --workdir runs/study_dip_smoke
      2 targets x {no feature term, λ_feat 0.1} x 20 iterations, unroll x2: 6 min 44 s wall (2 min 5 s of
      CPU time, mostly compiling) on the 2-core CPU shared with two other jobs (measured)
  gipip-jax study --config experiments/configs/study_dip_cifar10.py --workdir runs/study_dip_cifar10 \
      --set "targets.starts=[0, 1, 2, 3]" --set attack.iterations=400
      the measured CPU-budget run (with --set "grid.feature_weight=[0.1]" --set engine.strategy=unroll
      --set engine.attacks_per_device=1 and 400 iterations: 31 min wall on the loaded 2-core CPU) in
      experiments/README.md ("Learned-prior baselines (issue 8)")
"""

import importlib.util
import os


def get_config(arg=None):
    """study_gan_cifar10's config (it carries both the gan and dip blocks), switched to the DIP attack."""
    spec = importlib.util.spec_from_file_location(
        "study_gan_cifar10", os.path.join(os.path.dirname(__file__), "study_gan_cifar10.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.name = "dip"
    c.attack.parameterization = "dip"
    c.attack.iterations = 2000 if arg is None else 20
    c.grid.feature_weight = [0.0, 0.1]
    return c
