"""GradInversion-style batch attack (Yin et al., 2021): labels from the update + BN-statistics prior.

bs 4 real CIFAR-10 test images with unique labels; labels recovered by GradInversion's own rule
(`labels.yin`: the classes with the most negative last-layer weight gradient); objective
1 - cos + TV 1e-4 + λ_BN · Σ_layers (||μ_batch - μ_running|| + ||σ²_batch - σ²_running||)
(DeepInversion's BN term, λ_BN = 1e-2, not tuned here); signed Adam 0.1, the step schedule, box.
The BN term only carries information when the victim's running statistics are trained:
give a checkpoint (`gipip-jax train-victim --config experiments/configs/victim_cifar10.py:EPOCHS
--workdir W`, then --set victim.checkpoint=W/victim); the untrained default victim has running
mean 0 and variance 1 at every layer. GradInversion also uses group consistency and more
iterations; those are not implemented.

Commands, from the repository root:
  gipip-jax attack --config experiments/configs/gradinversion_cifar10.py:smoke --workdir runs/gi_bn_smoke
      1 batch of 4, 200 iterations, convnet_tiny victim: 1 min 50 s on the 2-core CPU (measured, shared)
  gipip-jax attack --config experiments/configs/gradinversion_cifar10.py --workdir runs/gi_bn_cifar10
      8 batches x 24,000 iterations on ResNet-18: days on the 2-core CPU (not run there)
"""

import pathlib
import runpy


def get_config(arg=None):
    c = runpy.run_path(str(pathlib.Path(__file__).with_name("ig_paper_cifar10.py")))["get_config"](arg)
    c.name = "gradinversion_bn"
    c.targets.batch_size = 4
    c.attack.labels = "yin"
    c.grid.bn_weight = [1e-2]
    if arg == "smoke":
        c.victim.name = "convnet_tiny"
    return c
