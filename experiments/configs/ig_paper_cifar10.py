"""Inverting Gradients (Geiping et al., 2020) with its paper defaults, on real CIFAR-10 test images.

1 - cos over all layers' gradients + TV 1e-4 (their CLI default), Adam lr 0.1 on the SIGN of the
gradient, lr x0.1 at 3/8, 5/8, 7/8, box projection, 24,000 iterations, x ~ N(0, 1); bs 1,
untrained CIFAR ResNet-18 (seed 0), given labels. restarts: 1 (their CLI default; the paper uses
up to 8 for its hardest settings: --set attack.restarts=8). Compare ig_cifar10.py, which is
GI-PIP's recipe (unsigned Adam, TV 1e-6, 10k iterations) with the prior off.

Commands, from the repository root:
  gipip-jax attack --config experiments/configs/ig_paper_cifar10.py:smoke --workdir runs/ig_paper_smoke
      1 target, 200 iterations: ~2.5 min on the 2-core CPU (as gipip_cifar10.py:smoke)
  gipip-jax attack --config experiments/configs/ig_paper_cifar10.py --workdir runs/ig_paper_cifar10
      8 targets x 24,000 iterations: ~33 h on the 2-core CPU at ~1.6 steps/s (not run there)
Add the BN-statistics prior (needs a victim with trained running statistics):
  --set "grid.bn_weight=[1e-2]" --set victim.checkpoint=W/victim   (see gradinversion_cifar10.py)
"""

import pathlib
import runpy


def get_config(arg=None):
    c = runpy.run_path(str(pathlib.Path(__file__).with_name("gipip_cifar10.py")))["get_config"](arg)
    c.name = "ig_paper"
    c.prior.checkpoint = ""
    c.attack.update(dict(matching="cosine", signed=True, learning_rate=0.1,
                         iterations=24_000 if arg != "smoke" else 200, restarts=1, optimizer="adam", labels="given"))
    c.grid.update(dict(tv_weight=[1e-4], as_weight=[0.0], bn_weight=[0.0]))
    c.targets.unique_labels = True
    return c
