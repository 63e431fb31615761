"""The GAN prior of the GIAS-style baseline: a DCGAN trained on 5 % of the CIFAR-10 train split.

The same auxiliary subset as the AE prior (experiments/configs/ae_cifar10.py: data.auxiliary_split
with the same fraction, seed and held-out count: 2,500 train images); targets come from the test
split, so no target is in it. Standard DCGAN recipe: non-saturating BCE, Adam 2e-4 (b1 0.5),
batch 64, z ~ N(0, I) of 100 dims. Width 32 (generator 4x4x128 -> 8x8x64 -> 16x16x32 -> 32x32x3, ~0.3 M parameters) keeps
CPU training affordable; the classic DCGAN width is 64 (`--set width=64`, ~4x the cost).

Commands, from the repository root:
  gipip-jax train-gan --config experiments/configs/gan_cifar10.py --workdir runs/gan_cifar10_aux5
      2,500 images, 60 epochs (2,340 steps): 28 min wall (10 min of CPU time) on the 2-core CPU shared
      with two other jobs (measured); writes runs/gan_cifar10_aux5/gan and gan_samples.png (the
      checkpoint shipped in experiments/checkpoints/gan_cifar10_aux5 was made by this command)
  gipip-jax train-gan --config experiments/configs/gan_cifar10.py --workdir runs/gan_cifar10_aux100 \
      --set aux.fraction=1.0 --set epochs=5
      all of the train split but the AE's 1,000 held-out images (49,000 images)
  gipip-jax train-gan --config experiments/configs/gan_cifar10.py:smoke --workdir runs/gan_smoke
      128 images, 1 epoch: 25 s wall (measured; 5 s of it training)
Per auxiliary fraction (the aux-amount experiment): --set aux.fraction=0.01 (or aux.count=N);
other data: --set data.name=tiny_imagenet (64 px: 4 upsampling stages).
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.data = dict(name="cifar10", split="train", data_dir=None, cache_dir=None, image_size=None)
    c.aux = dict(fraction=0.05, count=None, seed=0)   # as ae_cifar10.py: the same 2,500 images
    c.heldout_count = 1000   # as ae_cifar10.py: fraction 1.0 leaves the AE's held-out images out here too
    c.latent_dim = 100
    c.width = 32
    c.epochs = 60
    c.batch_size = 64
    c.learning_rate = 2e-4
    c.b1 = 0.5
    c.seed = 0
    c.overwrite = False
    if arg == "smoke":
        c.aux.fraction, c.aux.count = None, 128
        c.heldout_count = 64
        c.epochs = 1
        c.batch_size = 32
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing")
    return c
