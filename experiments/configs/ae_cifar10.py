"""GI-PIP's autoencoder prior, trained on 5 % of the CIFAR-10 train split (2,500 images).

Default recipe `mse_adam` (MSE, Adam 1e-3, batch 16), 150 epochs: it reaches a held-out error
near the paper's AS offset c = 0.001. The authors' recipe (`--set recipe=bce_adadelta`: BCE,
Adadelta lr 0.1) was measured here at held-out MSE 0.0145 after 50 epochs (mse_adam: 0.0022),
far above c, so AS would pull images toward errors natural images do not have.
1,000 further train images (disjoint from the auxiliary set) measure the held-out error.
Targets come from the test split, so the auxiliary set never contains a target.

Commands, from the repository root:
  gipip-jax train-ae --config experiments/configs/ae_cifar10.py --workdir runs/ae_cifar10
      5 min on the 2-core CPU (measured, 150 epochs, ~2 s each); writes runs/ae_cifar10/ae (the checkpoint shipped in
      experiments/checkpoints/ae_cifar10_aux5 was made by this command)
  gipip-jax train-ae --config experiments/configs/ae_cifar10.py:reference --workdir runs/ae_cifar10_reference
      the reference recipe the authors point to (chenjie's): BCE, Adadelta lr 0.1, batch 16, 100 epochs on
      [0, 1] images; made experiments/checkpoints/ae_cifar10_aux5_reference (metadata "recipe": "bce_adadelta")
  gipip-jax train-ae --config experiments/configs/ae_cifar10.py:smoke --workdir runs/ae_smoke
      256 images, 1 epoch: 17 s on the 2-core CPU (measured)
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.data = dict(name="cifar10", split="train", data_dir=None, cache_dir=None, image_size=None)
    c.aux = dict(fraction=0.05, count=None, seed=0)
    c.heldout_count = 1000
    c.recipe = "mse_adam"
    c.learning_rate = None  # the recipe's default
    c.epochs = 150
    c.target_heldout_mse = None  # stop once the held-out MSE is at most this (epochs is then the most)
    c.batch_size = 16
    c.seed = 0
    c.overwrite = False
    if arg == "reference":
        c.recipe, c.epochs = "bce_adadelta", 100
    elif arg == "smoke":
        c.aux.fraction, c.aux.count = None, 256
        c.heldout_count = 64
        c.epochs = 1
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':reference', ':smoke' or nothing")
    return c
