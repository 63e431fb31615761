"""DLG (Zhu et al., 2019) on real CIFAR-10 test images: bs 1, sigmoid LeNet, weights ~ U(-0.5, 0.5).

Squared-L2 gradient matching over all layers, no prior, no box; dummy image and soft label
(softmax of learned logits) optimized jointly by optax's L-BFGS (zoom line search, history 100).
The reference runs 300 PyTorch L-BFGS steps of up to 20 inner iterations each (up to 6,000
iterations); here one iteration is one L-BFGS update, and 6,000 are used (3,000 left 3 of 8
targets below 30 dB). Labels are not given:
each record holds the argmax of the learned soft label and its accuracy.

A study config like every attack config (`gipip-jax attack` runs its attacks one per device).

Commands, from the repository root:
  gipip-jax attack --config experiments/configs/dlg_cifar10.py:smoke --workdir runs/dlg_smoke
      1 target, 300 iterations: ~30 s on the 2-core CPU (mostly compile)
  gipip-jax attack --config experiments/configs/dlg_cifar10.py --workdir runs/dlg_cifar10
      8 targets x 6,000 iterations: 10 min wall (4.9 min CPU) on the 2-core CPU shared with other jobs
      (measured: mean PSNR 54.2 dB, 7 of 8 >= 30 dB, labels 8/8; experiments/results/dlg_cifar10.jsonl)
Batches: --set targets.batch_size=4 (unique labels; add --set targets.unique_labels=False for
consecutive images, repeats possible). Labels read off the update instead (then only the image is
optimized): --set attack.labels=idlg (bs 1) or yin / llg / bias_count (any bs); see idlg_cifar10.py.
"""

import ml_collections

from gipip_jax.study import ENGINE_DEFAULTS, THREAT_DEFAULTS, default_grid


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "dlg"
    c.seed = 0
    c.data = dict(name="cifar10", split="test", data_dir=None, cache_dir=None, image_size=None)
    c.targets = dict(starts=list(range(8)), batch_size=1, unique_labels=True)
    c.victim = dict(name="lenet", checkpoint="", init_seed=0, init="flax")
    c.prior = dict(checkpoint="", offset=None)
    c.attack = dict(optimizer="lbfgs", labels="dlg", matching="l2", iterations=6_000, restarts=1, max_tries=2,
                    restart_selection="matching")
    c.threat = dict(THREAT_DEFAULTS)
    c.grid = default_grid()
    c.engine = dict(ENGINE_DEFAULTS, chunk_size=100, checkpoint_every=1000)
    c.metrics = dict(lpips_net="alexnet")
    if arg == "smoke":
        c.targets.starts = [0]
        c.attack.iterations = 300
        c.engine.chunk_size = 50
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing")
    return c
