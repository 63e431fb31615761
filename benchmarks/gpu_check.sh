#!/usr/bin/env bash
# The GPU check of issue 16 (item 3) in one command (details: benchmarks/gpu_check.py's docstring).
#
#   bash benchmarks/gpu_check.sh [OUTDIR]         on a GPU machine: step benchmark at N = 1, 64, 512
#                                                 vs the PyTorch reference, a 64-attack 10k-iteration
#                                                 study, fp32 vs TF32 PSNR; 8 min at most (caps)
#   bash benchmarks/gpu_check.sh --toy [OUTDIR]   the same three parts at toy sizes on the CPU (~2-3 min)
#                                                 (also without torch: part 1 then JAX rows only, no PyTorch
#                                                 reference; GPU_CHECK_NO_TORCH=1 hides torch, for testing)
#
# Writes OUTDIR/gpu_check.json (default OUTDIR runs/gpu_check; also copied to
# benchmarks/results/gpu_check.json outside --toy), per-part JSON and logs, and prints a summary
# against the goals. No GPU visible to JAX and PyTorch (outside --toy): one error line, exit 2.
# Python: $PYTHON, else the active environment's python (after `. .venv/bin/activate`), else python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
exec "$PYTHON" benchmarks/gpu_check.py "$@"
