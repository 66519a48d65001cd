#!/usr/bin/env bash
# The GPU check (issue 19): one command on a machine with one NVIDIA GPU and no network, at most
# 8 minutes. Writes bench/results/gpu_packing.{json,md}: GPU busy % and images/s per GPU with 1, 2
# and 4 concurrent widerface-gpu-sized trials on generated WIDER-like images, torchvision's
# per-sample augmentation against the batched one, side by side in one run; the loader alone per
# CPU core; the batched render on the CPU against the GPU. Where Ray, Optuna and MLflow import, a
# real search with fractional GPUs follows (bench/gpu_search.sh); elsewhere it says so and skips it.
#
#   bash bench/gpu_check.sh                       # ~6 min on one H200
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --seconds 15
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" bench/gpu_packing.py "$@"
if "$PY" -c "import ray, optuna, mlflow" 2>/dev/null; then
  "$PY" bench/gpu_search.py
else
  echo "Ray, Optuna or MLflow is not importable here: the Ray search with fractional GPUs is skipped"
fi
