#!/usr/bin/env bash
# On a GPU machine: build mmcore (core + CUDA kernels) in-tree, run the GPU engine tests, then the
# offline engine benchmark. Usage: bash bench/gpu_engine_check.sh LOG_DIR NUM_REQUESTS [ARCHS]
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-/tmp}
NUM=${2:-1000}
ARCHS=${3:-90a}
export PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$LOG/gpu.txt"
start=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DMMCORE_BUILD_TESTS=OFF -DMMCORE_CUDA=ON \
  -DMMCORE_CUDA_ARCHS="$ARCHS" >"$LOG/build.log" 2>&1 &&
  cmake --build build/gpu -j 16 >>"$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
echo "build: $(($(date +%s) - start)) s"
python -m pytest -q -s -p no:cacheprovider tests/python/test_gpu_engine.py 2>&1 | tee "$LOG/pytest.log" | grep -E "GPU bf16|passed|failed|Error|error" | tail -30
python bench/bench_gpu_offline.py --num-requests "$NUM" --out "$LOG" 2>&1 | tee "$LOG/bench.log" |
  grep -E "^(machine|mmcore|roofline|hf) " 
