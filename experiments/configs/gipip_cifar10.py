"""GI-PIP on real CIFAR-10 test images: bs 1, untrained CIFAR ResNet-18 (seed 0), given labels.

The authors' settings (DESIGN.md): 1 - cos over all layers' gradients + TV 1e-6 + AS 1e-6 with
c from the AE checkpoint (0.001 at 32 px), Adam lr 0.1 unsigned, x0.1 at 3/8, 5/8, 7/8, box
projection, 10,000 iterations, 1 restart, PyTorch's default init of the victim. The AE prior ships
in experiments/checkpoints/ (trained by experiments/configs/ae_cifar10.py on 5 % of the CIFAR-10
train split).

This is a study config like every attack config: `gipip-jax attack` runs its attacks one at a
time (one per device), `gipip-jax study` in measured waves; both write the same records.

Commands, from the repository root:
  gipip-jax attack --config experiments/configs/gipip_cifar10.py:smoke --workdir runs/gipip_smoke
      1 target, 200 iterations
  gipip-jax attack --config experiments/configs/gipip_cifar10.py --workdir runs/gipip_cifar10
      8 targets x 10,000 iterations: ~2.2 h on the 2-core CPU at ~10 steps/s (the as_claim run's
      measured rate); the ConvNet (--set victim.name=convnet) is faster.
Any field can be changed with --set, e.g. --set attack.iterations=2000 --set victim.name=convnet
--set "grid.as_weight=[1e-4]" --set "grid.noise_std=[1e-3]" --set threat.kind=fedavg.
"""

import ml_collections

from gipip_jax.study import ENGINE_DEFAULTS, THREAT_DEFAULTS, default_grid


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "gipip"
    c.seed = 0
    c.data = dict(name="cifar10", split="test", data_dir=None, cache_dir=None, image_size=None)
    c.targets = dict(starts=list(range(8)), batch_size=1, unique_labels=True)
    c.victim = dict(name="resnet18", checkpoint="", init_seed=0, init="torch")  # init: torch (the authors' PyTorch defaults) | flax
    c.prior = dict(checkpoint="experiments/checkpoints/ae_cifar10_aux5", offset=None)
    c.attack = dict(optimizer="adam", parameterization="pixels", matching="cosine", learning_rate=0.1, signed=False,
                    iterations=10_000, restarts=1, max_tries=2, restart_selection="matching", labels="given")
    c.threat = dict(THREAT_DEFAULTS)
    c.grid = default_grid(tv_weight=[1e-6], as_weight=[1e-6])
    c.engine = dict(ENGINE_DEFAULTS, chunk_size=100, checkpoint_every=1000)
    c.metrics = dict(lpips_net="alexnet")
    if arg == "smoke":
        c.targets.starts = [0]
        c.attack.iterations = 200
        c.engine.chunk_size = 50
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing")
    return c
