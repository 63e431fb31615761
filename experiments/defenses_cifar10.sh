#!/usr/bin/env bash
# Issue-5 defense table at CPU scale: IG and GI-PIP (λ_AS 1e-4) under each defense setting on the same
# 4 real CIFAR-10 test images (0-3, bs 1, given labels, untrained VICTIM, 500 iterations, batched study
# runner), next to the utility cost of each setting on the same VICTIM architecture (trained with the
# defended FedSGD update; cached per setting). One defense field at a time against the undefended run.
# Usage: bash experiments/defenses_cifar10.sh [WORKROOT] [VICTIM]
#   VICTIM convnet (default): attacks ~30 min, utility (5k images, 2 epochs) ~2 min a setting on the
#   2-core CPU; VICTIM convnet_tiny: utility recipe :cpu (10k images, 4 epochs, ~1 min a setting).
set -euo pipefail
root=${1:-runs/defenses}
victim=${2:-convnet}
common=(--set victim.name=$victim --set "targets.starts=[0, 1, 2, 3]" --set "grid.as_weight=[0.0, 1e-4]"
        --set attack.iterations=500 --set engine.strategy=vmap_patches --set engine.attacks_per_device=8)
study() { gipip-jax study --config experiments/configs/study_cifar10.py --workdir "$root/$1" "${common[@]}" "${@:2}"; }
study noise --set "grid.noise_std=[0.0, 1e-3, 1e-2, 1e-1]"
study prune --set "grid.prune_sparsity=[0.5, 0.9, 0.99]"
study dp_sgd --set "grid.dp_clip_norm=[1.0]" --set "grid.dp_noise_multiplier=[0.1, 1.0]"
study clip --set "grid.clip_norm=[1.0, 0.01]"
study laplace --set "grid.noise=['laplace']" --set "grid.noise_std=[1e-2]"
study dropout --set "grid.dropout_rate=[0.5]"
study soteria --set "grid.soteria_pruning=[0.8]"
if [ "$victim" = convnet_tiny ]; then
  recipe=(--config experiments/configs/utility_cifar10.py:cpu)
else
  recipe=(--config experiments/configs/utility_cifar10.py --set victim.name=$victim --set train_count=5000
          --set eval_count=2000 --set epochs=2)
fi
# Soteria's utility is left out: its per-feature Jacobian makes training ~20x slower a step.
gipip-jax utility "${recipe[@]}" --workdir "$root/utility" --set "settings=[{}, {'noise_std': 1e-3}, \
{'noise_std': 1e-2}, {'noise_std': 1e-1}, {'prune_sparsity': 0.5}, {'prune_sparsity': 0.9}, {'prune_sparsity': 0.99}, \
{'dp_clip_norm': 1.0, 'dp_noise_multiplier': 0.1}, {'dp_clip_norm': 1.0, 'dp_noise_multiplier': 1.0}, \
{'clip_norm': 1.0}, {'clip_norm': 0.01}, {'noise': 'laplace', 'noise_std': 1e-2}, {'dropout_rate': 0.5}]"
python experiments/defense_table.py "$root" "$root/utility/utility.json"
