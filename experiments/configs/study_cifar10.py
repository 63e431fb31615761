"""A GI-PIP vs IG study on real CIFAR-10 test images, run as one batched program (`gipip-jax study`).

8 targets (bs 1, unique labels) x λ_AS in {0 (IG), 1e-6, 1e-4} x 1 restart = 24 attacks; untrained
ConvNet (seed 0), cosine + TV 1e-6 (+ AS with c from the AE checkpoint), Adam 0.1 unsigned, step
schedule, 1,000 iterations: the issue-2 comparison, as one study. The engine picks its strategy and
wave size by a fixed rule (engine.strategy="auto", engine.attacks_per_device=0; engine.choose_plan)
and saves the plan in W/plan.json (engine.plan=W/plan.json replays it in another run); results
stream to W/results.jsonl; killing and rerunning the command resumes.

Commands, from the repository root:
  gipip-jax study --config experiments/configs/study_cifar10.py:smoke --workdir runs/study_smoke
      2 targets x {IG, GI-PIP} x 50 iterations, ConvNet, vmap_patches x2 (given): 26 s on the
      2-core CPU (measured)
  gipip-jax study --config experiments/configs/study_cifar10.py --workdir runs/study_cifar10
      24 attacks x 1,000 iterations: ~11 min on the 2-core CPU at the measured 38 attack-steps/s
      (with --set attack.iterations=200 it took 2 min 56 s, plan probe included; BENCHMARKS.md)
Any field can be changed with --set, e.g. --set victim.name=resnet18 --set "grid.as_weight=[0.0, 1e-4]"
--set "grid.noise_std=[0, 1e-3, 1e-2]" --set "grid.prune_sparsity=[0, 0.9, 0.99]" --set threat.kind=fedavg
--set threat.local_steps=5 --set attack.labels=llg.
"""

import ml_collections

from gipip_jax.defenses import DEFENSE_DEFAULTS
from gipip_jax.threat_models import THREAT_DEFAULTS


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "study"
    c.seed = 0
    c.data = dict(name="cifar10", split="test", data_dir=None, cache_dir=None, image_size=None)
    c.targets = dict(starts=list(range(8)), batch_size=1)
    c.victim = dict(name="convnet", checkpoint="", init_seed=0, init="flax")  # init: flax | torch (PyTorch's defaults)
    c.prior = dict(checkpoint="experiments/checkpoints/ae_cifar10_aux5", offset=None)
    # labels: "given", or recovered from each shared update: idlg | yin | llg | bias_count.
    c.attack = dict(matching="cosine", learning_rate=0.1, signed=False, iterations=1000, restarts=1, max_tries=2,
                    restart_selection="matching",  # the restart kept per target: lowest matching term | objective
                    labels="given",
                    init="random")  # where the pixels start: random (N(0, 1)) | flat (the normalization's mean colour)
    # One threat model per study: fedsgd | fedavg (local_steps, local_lr, local_batch_size), clients summed.
    c.threat = dict(THREAT_DEFAULTS)
    # Per-attack settings, each a list: every combination runs on every target. Objective weights
    # (as_offset None: the AE's c), the defense on the client's update (0: off), and whether the
    # attacker knows that defense (adaptive; gipip_jax/adaptive.py).
    c.grid = dict(tv_weight=[1e-6], as_weight=[0.0, 1e-6, 1e-4], as_offset=[None], bn_weight=[0.0],
                  **{field: [value] for field, value in DEFENSE_DEFAULTS.items()}, adaptive=[False])
    # strategy: auto | unroll | vmap | vmap_patches; attacks_per_device 0: by engine.choose_plan's rule;
    # plan: another run's plan.json to replay ("": none). Multi-host: distributed=True, and
    # coordinator/num_processes/process_id unless the cluster is auto-detected.
    c.engine = dict(strategy="auto", attacks_per_device=0, chunk_size=50, checkpoint_every=200, plan="",
                    distributed=False, coordinator="", num_processes=0, process_id=-1)
    c.metrics = dict(lpips_net="alexnet")
    if arg == "smoke":
        c.targets.starts = [0, 1]
        c.grid.as_weight = [0.0, 1e-4]
        c.attack.iterations = 50
        c.engine.chunk_size = 10
        c.engine.checkpoint_every = 20
        c.engine.strategy, c.engine.attacks_per_device = "vmap_patches", 2  # given: no plan rule
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use ':smoke' or nothing")
    return c
