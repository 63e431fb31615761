"""Utility cost of each defense setting: CIFAR-10 test accuracy of a victim trained with every
client gradient defended (one FedSGD client per step, eval-mode victim; see gipip_jax/utility.py).
Results are cached in WORKDIR/utility.json by setting, so a rerun or a longer list trains only the
new settings. Each setting is a dict of flat defense fields (gipip_jax.defenses.DEFENSE_DEFAULTS).

Commands, from the repository root:
  gipip-jax utility --config experiments/configs/utility_cifar10.py:smoke --workdir runs/utility_smoke
      convnet_tiny, 2,000 images, 2 epochs, 4 settings: 2.3 min on the 2-core CPU (measured); a
      mechanism check only: 62 steps leave the victim near chance (eval acc 0.10-0.12)
  gipip-jax utility --config experiments/configs/utility_cifar10.py:cpu --workdir runs/utility_cpu
      convnet_tiny, 10,000 images, 4 epochs (55-95 s a setting on the 2-core CPU, DP-SGD slowest,
      measured; undefended eval acc 0.332, noise 1e-2 0.352, prune 0.9 0.318, DP-SGD z=1 0.265), the
      whole sweep below (30 settings; Soteria ~20x slower a step: a Jacobian per feature): 1-2 hours
  gipip-jax utility --config experiments/configs/utility_cifar10.py:defense_study --workdir runs/utility_ds
      the defense study's recipe (experiments/defenses.py cpu): ConvNet with PyTorch's init, 5,000 images,
      8 epochs, accuracy on 5,000 test images; 5-11 min a setting on the 2-core CPU (DP-SGD ~14). Its
      published cache, experiments/results/defenses/utility.json, holds every setting of that study for
      seeds 0 and 1: copied to WORKDIR/utility.json (or an audit's W/utility/), those settings are read,
      not trained (`gipip-jax audit --utility experiments/configs/utility_cifar10.py:defense_study`)
  gipip-jax utility --config experiments/configs/utility_cifar10.py --workdir runs/utility
      ConvNet, 50,000 images, 5 epochs, the whole sweep: meant for a GPU (on the 2-core CPU an
      epoch of ConvNet takes ~13 min, so ~1 h a setting; not run there)
Run a part of a sweep with e.g. --set "settings=[{}, {'noise_std': 0.01}]".
"""

import ml_collections


def sweep():
    """The defense grid of issue 5, one field at a time against the undefended baseline {}."""
    settings = [{}]
    settings += [{"noise_std": s} for s in (1e-4, 1e-3, 1e-2, 1e-1)]
    settings += [{"noise": "laplace", "noise_std": s} for s in (1e-4, 1e-3, 1e-2, 1e-1)]
    settings += [{"prune_sparsity": p} for p in (0.5, 0.9, 0.95, 0.99)]
    settings += [{"prune_sparsity": p, "prune_scope": "global"} for p in (0.5, 0.9, 0.95, 0.99)]
    settings += [{"clip_norm": c} for c in (1.0, 0.1, 0.01)]
    settings += [{"dp_clip_norm": 1.0, "dp_noise_multiplier": z} for z in (0.0, 0.5, 1.0, 2.0)]
    settings += [{"dropout_rate": r} for r in (0.25, 0.5, 0.75)]
    settings += [{"soteria_pruning": p} for p in (0.4, 0.8, 0.95)]
    return settings


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.data = dict(name="cifar10", test_split="test", data_dir=None, cache_dir=None, image_size=None)
    c.victim = dict(name="convnet", init="flax")   # init: flax | torch (PyTorch's default init, as the attacks')
    c.train_count = 50_000
    c.eval_count = 10_000
    c.epochs = 5
    c.batch_size = 64
    c.learning_rate = 0.05
    c.augment = True
    c.seed = 0
    c.delta = 1e-5  # the delta of the DP-SGD eps reported
    c.settings = sweep()
    if arg == "smoke":
        c.victim.name = "convnet_tiny"
        c.train_count, c.eval_count, c.epochs = 2_000, 1_000, 2
        c.settings = [{}, {"noise_std": 1e-2}, {"prune_sparsity": 0.99},
                      {"dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0}]
    elif arg == "cpu":
        c.victim.name = "convnet_tiny"
        c.train_count, c.eval_count, c.epochs = 10_000, 2_000, 4
    elif arg == "defense_study":
        c.victim.init = "torch"
        c.train_count, c.eval_count, c.epochs = 5_000, 5_000, 8
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke', ':cpu', ':defense_study' or nothing")
    return c
