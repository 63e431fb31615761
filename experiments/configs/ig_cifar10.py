"""Inverting-Gradients-style baseline: gipip_cifar10.py with the AS prior off (λ_AS = 0).

Everything else (targets, victim, TV 1e-6, unsigned Adam, schedule, iterations) is the same, so
the difference to GI-PIP is the prior alone. (The paper-faithful IG, with signed gradients and
24k iterations, is a separate baseline.)

Commands, from the repository root:
  gipip-jax attack --config experiments/configs/ig_cifar10.py:smoke --workdir runs/ig_smoke
      1 target, 200 iterations: ~2.5 min on the 2-core CPU (as gipip_cifar10.py:smoke)
  gipip-jax attack --config experiments/configs/ig_cifar10.py --workdir runs/ig_cifar10
      8 targets x 10,000 iterations: ~14 h on the 2-core CPU (not run there)
"""

import pathlib
import runpy


def get_config(arg=None):
    gipip = runpy.run_path(str(pathlib.Path(__file__).with_name("gipip_cifar10.py")))
    c = gipip["get_config"](arg)
    c.name = "ig"
    c.grid.as_weight = [0.0]
    return c
