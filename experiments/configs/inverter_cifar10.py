"""Learning to Invert (LTI; gipip_jax/inverter.py): a network that maps the victim's defended shared
update to the client's images, trained on auxiliary CIFAR-10 train images (never the targets, which
come from the test split) and selected on 1,000 held-out auxiliary images.

The victim is the studies' (study_cifar10.py: untrained ConvNet, Flax init, seed 0; the inverter is
tied to these exact weights), FedSGD at client batch 1, no defense. The defense is a flat block of
defenses.DEFENSE_DEFAULTS fields, applied to every training update with fresh noise and masks each
step: e.g. --set defense.noise_std=0.01, --set defense.prune_sparsity=0.9; the threat model likewise
(--set threat.kind=fedavg --set threat.local_steps=5). Auxiliary images: the AE prior's split
(aux.fraction 0.05, seed 0: the same 2,500 images, the same 1,000 held out); aux.fraction=1.0 is
all of train minus the 1,000 held out (LTI's amount). Attack with it: `--set attack.init=inverter
--set inverter.checkpoint=W/inverter` on a study config (attack.iterations=0: LTI alone; > 0: the
optimization attack starting at LTI's output). An interrupted training resumes when the same command is
rerun, from WORKDIR/inverter_progress (written at every held-out check, removed once the network is saved).

Variants (reference: MLP hidden 3,000, Adam 1e-4, batch 256, lr x0.1 at 3/4 of training; ResNet20
hashed into 0.5 |theta| bins, 40 epochs on 50,000 images):
  :smoke  convnet_tiny, 256 aux images, hidden 256, whole update, 2 epochs (CI)
  :cpu    ConvNet (539,178 parameters), 5 % aux, hashed into 16,384 bins, hidden 1,000, Adam 1e-3
          (1e-4 learns too slowly in a CPU budget), 30 epochs (270 steps), held-out check every 5
  :cpu_all  the same network and optimizer on all of train (49,000 aux images), 6 epochs (1,146
          steps), held-out check every epoch (three_priors.py's cpu_all)
  (none)  ConvNet, 5 % aux, the reference's model: 2^18 bins (~0.49 |theta|), hidden 3,000, Adam 1e-4,
          800 epochs (7,200 steps, the reference's 40 epochs x 195 steps); for a GPU
  :full   the same on all of train (49,000 aux images), 40 epochs (7,640 steps); for a GPU

Commands, from the repository root (times measured on the shared 2-core CPU, another job running):
  gipip-jax train-inverter --config experiments/configs/inverter_cifar10.py:smoke --workdir runs/inverter_smoke
      256 images, 2 epochs: 28 s wall (measured; 618 client updates/s; held-out MSE 0.0733, mean image 0.0707)
  gipip-jax train-inverter --config experiments/configs/inverter_cifar10.py:cpu --workdir runs/inverter_cpu
      measured with --set epochs=2: 8 min 52 s wall, 15.4 ConvNet client updates/s (making the 256
      per-example updates of a step dominates; the CPU shared with two other jobs), i.e. ~2.7 min per
      epoch of 2,500 updates + ~1.1 min per held-out check of 1,000: the 30 epochs take ~1.6 h wall
      (estimated from that rate; not run to the end here). After 2 epochs the held-out MSE was 0.0604
      against the mean image's 0.0590: 2 epochs are not enough to pass the baseline
  gipip-jax train-inverter --config experiments/configs/inverter_cifar10.py --workdir runs/inverter_aux5
  gipip-jax train-inverter --config experiments/configs/inverter_cifar10.py:full --workdir runs/inverter_full
      not run here (no GPU in this session): about 1.8 M and 1.9 M client updates through a 0.8 G-parameter MLP
"""

import ml_collections

from gipip_jax.defenses import DEFENSE_DEFAULTS
from gipip_jax.threat_models import THREAT_DEFAULTS


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.data = dict(name="cifar10", split="train", data_dir=None, cache_dir=None, image_size=None)
    c.aux = dict(fraction=0.05, count=None, seed=0)   # as ae_cifar10.py: the same 2,500 images
    c.heldout_count = 1000
    c.victim = dict(name="convnet", checkpoint="", init_seed=0, init="flax")
    c.threat = dict(THREAT_DEFAULTS)
    c.defense = dict(DEFENSE_DEFAULTS)
    c.client_batch_size = 1
    c.hidden = 3000
    c.num_bins = 2 ** 18      # 0: the whole update
    c.hash_seed = 0
    c.epochs = 800
    c.batch_size = 256        # client updates per step
    c.learning_rate = 1e-4
    c.decay_at = 0.75         # lr x0.1 from this fraction of the steps on
    c.eval_every = 10         # epochs between held-out evaluations (and the last epoch)
    c.seed = 0
    c.overwrite = False
    if arg == "smoke":
        c.aux.fraction, c.aux.count = None, 256
        c.heldout_count = 64
        c.victim.name = "convnet_tiny"
        c.hidden, c.num_bins = 256, 0
        c.epochs, c.batch_size, c.learning_rate, c.eval_every = 2, 64, 1e-3, 1
    elif arg == "cpu":
        c.hidden, c.num_bins = 1000, 16384
        c.epochs, c.learning_rate, c.eval_every = 30, 1e-3, 5
    elif arg == "cpu_all":
        c.aux.fraction = 1.0
        c.hidden, c.num_bins = 1000, 16384
        c.epochs, c.learning_rate, c.eval_every = 6, 1e-3, 1
    elif arg == "full":
        c.aux.fraction = 1.0
        c.epochs, c.eval_every = 40, 1
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke', ':cpu', ':cpu_all', ':full' or nothing")
    return c
