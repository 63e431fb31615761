"""Trains a victim on CIFAR-10 for the trained-victim experiments (GI-PIP attacks an untrained
ResNet-18 by default; the paper also attacks one trained for 100 epochs).

`:E` trains for E epochs; `:smoke` trains a tiny ResNet on 512 images for 1 epoch.
Commands, from the repository root:
  gipip-jax train-victim --config experiments/configs/victim_cifar10.py:smoke --workdir runs/victim_smoke
      35 s on the 2-core CPU (measured; eval acc 0.13 after 1 epoch on 512 images)
  gipip-jax train-victim --config experiments/configs/victim_cifar10.py:2 --workdir runs/victim_e2
      ResNet-18, 50,000 images, 2 epochs: ~6 s per batch-128 step measured on the
      2-core CPU, so ~40 min an epoch (a full run not made there); meant for a GPU
Then attack it with --set victim.checkpoint=runs/victim_e2/victim.
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.data = dict(name="cifar10", test_split="test", data_dir=None, cache_dir=None, image_size=None)
    c.victim = dict(name="resnet18")
    c.train_count = 0  # 0: the whole train split
    c.eval_count = 10_000
    c.epochs = 1
    c.batch_size = 128
    c.learning_rate = 0.1
    c.seed = 0
    c.overwrite = False
    if arg == "smoke":
        c.victim.name = "resnet_tiny"
        c.train_count, c.eval_count, c.epochs = 512, 256, 1
    elif arg:
        try:
            c.epochs = int(arg)
        except ValueError:
            raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or ':EPOCHS'") from None
    return c
