#!/usr/bin/env bash
# The GPU check of issue 12, one prepared run of a few minutes on a CUDA machine:
#   fit and predict throughput in bf16 and fp16 (the GradScaler path), the share of time the GPU waits for data,
#   and the training MFU (FLOPs from torch.utils.flop_counter.FlopCounterMode) of Unet-ResNet34 at 512 px windows.
# It prints one JSON summary on stdout (progress on stderr) and exits non-zero, with one clear line, where there is
# no CUDA device. Extra arguments go to benchmarks/bench_gpu.py (e.g. --json gpu.json, --peak-tflops 989).
#
#   bash benchmarks/gpu_check.sh --json gpu.json
#   PYTHON=.venv/bin/python GPU_CHECK_TIMEOUT=900 bash benchmarks/gpu_check.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's rs_pgd

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import torch; install rs-pgd (pip install -e .) or set PYTHON=/path/to/python" >&2
  exit 2
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU" >&2
  exit 2
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv >&2 || true
fi
exec timeout "${GPU_CHECK_TIMEOUT:-600}" "$PYTHON" "$HERE/bench_gpu.py" --device cuda "$@"
