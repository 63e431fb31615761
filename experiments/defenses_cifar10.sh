#!/usr/bin/env bash
# Issue-5 defense table at CPU scale: attacks (IG and GI-PIP λ_AS 1e-4) under each defense setting on
# the same 4 real CIFAR-10 test images (bs 1, untrained VICTIM, 500 iterations), next to the
# utility cost of each setting (convnet_tiny trained 4 epochs on 10k CIFAR-10 images with the
# defended FedSGD update, tested on 2k; cached per setting). One defense field at a time against the
# undefended baseline.
# Usage: bash experiments/defenses_cifar10.sh [WORKROOT] [VICTIM]
#   VICTIM convnet_tiny (default): 16 min on the 2-core CPU (8 attack studies + 9 utility runs);
#   VICTIM convnet: the attack studies take ~16 min more (~37 attack-steps/s).
set -euo pipefail
root=${1:-runs/defenses}
victim=${2:-convnet_tiny}
common=(--set victim.name=$victim --set "targets.starts=[0, 1, 2, 3]" --set "grid.as_weight=[0.0, 1e-4]"
        --set attack.iterations=500 --set engine.strategy=vmap_patches --set engine.attacks_per_device=8)
study=experiments/configs/study_cifar10.py
gipip-jax study --config $study --workdir "$root/noise" "${common[@]}" --set "grid.noise_std=[0.0, 1e-3, 1e-2, 1e-1]"
gipip-jax study --config $study --workdir "$root/prune" "${common[@]}" --set "grid.prune_sparsity=[0.5, 0.9, 0.99]"
gipip-jax study --config $study --workdir "$root/dp_sgd" "${common[@]}" --set "grid.dp_clip_norm=[1.0]" \
  --set "grid.dp_noise_multiplier=[0.1, 1.0]"
gipip-jax utility --config experiments/configs/utility_cifar10.py:cpu --workdir "$root/utility" --set "settings=[{}, \
{'noise_std': 1e-3}, {'noise_std': 1e-2}, {'noise_std': 1e-1}, {'prune_sparsity': 0.5}, {'prune_sparsity': 0.9}, \
{'prune_sparsity': 0.99}, {'dp_clip_norm': 1.0, 'dp_noise_multiplier': 0.1}, {'dp_clip_norm': 1.0, 'dp_noise_multiplier': 1.0}]"
gipip-jax summarize "$root"/{noise,prune,dp_sgd}/results.jsonl
