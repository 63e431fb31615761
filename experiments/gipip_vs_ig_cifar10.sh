#!/usr/bin/env bash
# Issue-2 table: GI-PIP vs IG (λ_AS = 0) on the same 8 real CIFAR-10 test images (indices 0-7), bs 1,
# untrained ConvNet (seed 0), 1,000 iterations each, AE prior from experiments/checkpoints/ae_cifar10_aux5.
# Usage: bash experiments/gipip_vs_ig_cifar10.sh [WORKROOT]   (~45 min on the 2-core CPU machine)
set -euo pipefail
root=${1:-runs/gipip_vs_ig}
common=(--set victim.name=convnet --set attack.iterations=1000 --set metrics.lpips_net=alexnet)
gipip-jax attack --config experiments/configs/ig_cifar10.py --workdir "$root/ig" "${common[@]}"
gipip-jax attack --config experiments/configs/gipip_cifar10.py --workdir "$root/gipip_as1e-6" "${common[@]}"
gipip-jax attack --config experiments/configs/gipip_cifar10.py --workdir "$root/gipip_as1e-4" "${common[@]}" --set "grid.as_weight=[1e-4]"
python -m gipip_jax.summarize "$root"/*/results.jsonl
