"""Learning to Invert (LTI) as an attack of the one runner, on real CIFAR-10 test images.

Everything as experiments/configs/study_cifar10.py (8 targets, bs 1, untrained ConvNet seed 0,
cosine + TV 1e-6, given labels, Adam 0.1, step schedule), but every attack's pixels start at the
output of the LTI network inverter.checkpoint for its target update (attack.init="inverter";
gipip_jax/inverter.py) instead of N(0, 1):
  attack.iterations=0 (default): LTI alone, the network's reconstruction is the result (records "lti:lti");
  attack.iterations=N > 0: LTI, then N iterations of the optimization attack (records "lti:lti+ig", or
  "lti:lti+gipip" with grid.as_weight > 0).
Records carry record["inverter"]: the checkpoint and its metadata (defense, aux data, held-out error).
The inverter must be trained for this victim, threat model and batch size (checked), e.g. by
`gipip-jax train-inverter --config experiments/configs/inverter_cifar10.py:cpu --workdir runs/inverter_cpu`
(then --set inverter.checkpoint=runs/inverter_cpu/inverter); a defense in grid.* should be the one it
was trained with.

Commands, from the repository root:
  gipip-jax study --config experiments/configs/study_lti_cifar10.py --workdir runs/study_lti \
      --set inverter.checkpoint=runs/inverter_cpu/inverter
  gipip-jax study --config experiments/configs/study_lti_cifar10.py --workdir runs/study_lti_ig \
      --set inverter.checkpoint=runs/inverter_cpu/inverter --set attack.iterations=1000
  gipip-jax study --config experiments/configs/study_lti_cifar10.py:smoke --workdir runs/study_lti_smoke \
      --set inverter.checkpoint=runs/inverter_smoke/inverter --set victim.name=convnet_tiny
      (after the inverter_cifar10.py:smoke command; 2 targets, LTI alone)
"""

import os

from gipip_jax.configs import load_config


def get_config(arg=None):
    if arg not in (None, "smoke"):
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing")
    c = load_config(os.path.join(os.path.dirname(__file__), "study_cifar10.py") + (f":{arg}" if arg else ""))
    c.name = "lti"
    c.attack.init = "inverter"
    c.attack.iterations = 0
    c.grid.as_weight = [0.0]
    c.inverter = dict(checkpoint="")   # give the trained network: --set inverter.checkpoint=W/inverter
    return c
