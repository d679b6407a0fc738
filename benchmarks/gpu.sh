#!/usr/bin/env bash
# The full-size rung on a GPU: synthsaebench-16k (16,384 features in d = 768), matryoshka and
# topk for 20M samples each, scored on held-out rows beside the oracle; the same table and
# worlds.json as benchmarks/bench_worlds.py. Meant for a lent H100/H200-class machine, where
# it should finish in under 8 minutes; nothing else in the project needs a GPU.
#
#   bash benchmarks/gpu.sh [OUT]          # OUT defaults to runs/gpu
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu}
PY=${PY:-.venv/bin/python}
WORLD=synthsaebench-16k
METHODS=${METHODS:-"matryoshka topk"}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ ! -d "$OUT/$WORLD/generate" ]; then
  # 1M training rows (the SAEs cycle them for 20M samples) and 32k held-out rows
  time "$PY" -m generate --source synthetic --world "$WORLD" --rows 1048576 --heldout-rows 32768 \
    --device cuda --run-dir "$OUT/$WORLD"
fi
time "$PY" benchmarks/bench_worlds.py --root "$OUT" --worlds "$WORLD" --methods $METHODS \
  --samples 20000000 --fit-rows 1048576 --eval-rows 16384 --device cuda --threads 8
