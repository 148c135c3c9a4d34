#!/usr/bin/env bash
# Measures on a GPU machine, in one run, what `hybridsep bench` measures on the CPU: per-graph time of one
# 10 s window under torch eager (CUDA) and ONNX Runtime (CUDA execution provider), streaming keep-up at hops
# 0.5 / 1 / 2 s, and peak memory, for the small and paper presets.
#
# Needs: a CUDA build of torch, and onnxruntime-gpu (the `cuda` extra) instead of onnxruntime; the other
# Python packages of the `train` extra. With no network, put the wheels in a folder and pass it as WHEELS.
#   WHEELS=.whl scripts/bench_gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-gpu}
mkdir -p "$out"
python=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ]; then
  $python -m pip install -q --no-index --no-deps --target /tmp/hybridsep-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/hybridsep-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())" \
  | tee "$out/onnxruntime.txt"
$python -m hybridsep_rt.cli bench --preset small paper --device cuda --threads 4 --json "$out/bench.json" \
  2>&1 | tee "$out/bench.txt"
