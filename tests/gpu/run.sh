#!/usr/bin/env bash
# Real-GPU checks in one go (< 4 minutes): the gpu-marked tests, then the measurement
# (idle W, loaded W, energy-counter J vs integrated-power J over 30 s of matmul load).
# Usage: tests/gpu/run.sh            (from anywhere; needs NVML, and torch with CUDA for the load)
#        PYTHON=/path/to/python tests/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
echo "== nvidia-smi"
timeout 20 nvidia-smi --query-gpu=index,name,uuid,driver_version,power.draw,power.limit,persistence_mode --format=csv || echo "(nvidia-smi unavailable)"
echo "== pytest -m gpu tests/gpu"
timeout 90 "$PYTHON" -m pytest -q -m gpu tests/gpu -p no:cacheprovider
tests_rc=$?
echo "== measure (10 s idle, 30 s matmul load, 0.5 s polls)"
timeout 100 "$PYTHON" tests/gpu/measure.py --idle 10 --load 30 --interval 0.5
measure_rc=$?
echo "== done: tests rc=$tests_rc, measure rc=$measure_rc"
[ "$tests_rc" -eq 0 ] && [ "$measure_rc" -eq 0 ]
