#!/usr/bin/env bash
# Issue 33's published audits: `gipip-jax audit` of the shipped ConvNet (untrained, PyTorch's init: the
# defense study's victim) on CIFAR-10 test images, at bs 1 (16 client batches) and bs 4 (8), undefended
# and with the defense study's least-leaking defense at 2 points of accuracy (Gaussian noise std 0.03,
# experiments/results/defenses/verdicts.json), 4,000 signed-Adam iterations (converged on this victim:
# experiments/README.md, issue 31), one stronger setting, the engine plan pinned. The accuracy cost
# column uses the defense study's utility recipe (utility_cifar10.py:defense_study); each audit's
# utility cache is seeded from that study's published one, which holds every setting tried here, so
# nothing is trained. Rerunning resumes every audit.
# Budget on the 2-core CPU (attack-steps at the defense study's rates, ~85/s at bs 1 and ~22/s at bs 4):
#   bs1_none 128 attacks (512k steps) ~1.7 h; bs1_noise 96 (384k) ~1.3 h; bs4_none 64 (256k) ~3.2 h;
#   bs4_noise 48 (192k) ~2.4 h: ~8.6 h in all. Measured: bs 1 at 75-92/s (2026-12-07); bs 4 at ~14.5/s
#   on another 2-core machine of this kind (AMD EPYC, 2026-12-07), which makes bs 4 ~8.6 h alone.
# Usage: bash experiments/audits_convnet.sh WORKROOT [BATCH_SIZES]   (each audit in
#   WORKROOT/bs{1,4}_{none,noise}; BATCH_SIZES "1 4" unless given, e.g. "4" to run only the bs-4 audits)
set -euo pipefail
root=${1:?usage: bash experiments/audits_convnet.sh WORKROOT [BATCH_SIZES]}
batch_sizes=${2:-1 4}
for bs in $batch_sizes; do
  case "$bs" in 1|4) ;; *) echo "audits_convnet.sh: batch size '$bs' is not one of this design's (1, 4)" >&2; exit 2;; esac
done
cd "$(dirname "$0")/.."
for bs in $batch_sizes; do
  targets=16; [ "$bs" = 4 ] && targets=8
  for name in none noise; do
    dir="$root/bs${bs}_$name"
    defense=(); [ "$name" = noise ] && defense=(--defense noise_std=0.03)
    if [ ! -e "$dir/utility/utility.json" ]; then
      mkdir -p "$dir/utility" && cp experiments/results/defenses/utility.json "$dir/utility/"
    fi
    "${PYTHON:-python}" -m gipip_jax.cli audit --model convnet --init torch --data cifar10 --batch-size "$bs" \
      --targets "$targets" --iterations 4000 --stronger 1 "${defense[@]}" \
      --utility experiments/configs/utility_cifar10.py:defense_study \
      --set engine.strategy=vmap_patches --set engine.attacks_per_device=4 --set engine.chunk_size=50 \
      --set engine.checkpoint_every=500 --workdir "$dir"
  done
done
