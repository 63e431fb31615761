"""GI-PIP on real CIFAR-10 test images: bs 1, untrained CIFAR ResNet-18 (seed 0), given labels.

The authors' settings (DESIGN.md): 1 - cos over all layers' gradients + TV 1e-6 + AS 1e-6 with
c from the AE checkpoint (0.001 at 32 px), Adam lr 0.1 unsigned, x0.1 at 3/8, 5/8, 7/8, box
projection, 10,000 iterations, 1 restart. The AE prior ships in experiments/checkpoints/
(trained by experiments/configs/ae_cifar10.py on 5 % of the CIFAR-10 train split).

Commands, from the repository root:
  gipip-jax attack --config experiments/configs/gipip_cifar10.py:smoke --workdir runs/gipip_smoke
      1 target, 200 iterations: 2.5 min on the 2-core CPU (measured; ~1.6 steps/s + compile)
  gipip-jax attack --config experiments/configs/gipip_cifar10.py --workdir runs/gipip_cifar10
      8 targets x 10,000 iterations: ~14 h on the 2-core CPU at that rate (not run
      there); the ConvNet (--set victim.name=convnet) runs ~9 steps/s. GPU: not yet measured.
Any field can be changed with --set, e.g. --set attack.iterations=2000 --set victim.name=convnet.
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "gipip"
    c.seed = 0
    c.data = dict(name="cifar10", split="test", data_dir=None, cache_dir=None, image_size=None)
    # Batch numbers of the split's partition into disjoint batches of distinct labels (data.unique_label_batches).
    c.targets = dict(starts=list(range(8)), batch_size=1)
    c.victim = dict(name="resnet18", checkpoint="", init_seed=0, init="torch")  # init: torch (the authors' PyTorch defaults) | flax
    c.prior = dict(checkpoint="experiments/checkpoints/ae_cifar10_aux5", offset=None)
    c.attack = dict(matching="cosine", tv_weight=1e-6, as_weight=1e-6, learning_rate=0.1, signed=False,
                    iterations=10_000, restarts=1, chunk_size=100, restart_selection="matching",
                    conv="auto")  # the attacked victim copy's convs: auto (patch_grad on CPU) | native | patch_grad
    c.metrics = dict(lpips_net="alexnet")
    if arg == "smoke":
        c.targets.starts = [0]
        c.attack.iterations = 200
        c.attack.chunk_size = 50
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing")
    return c
