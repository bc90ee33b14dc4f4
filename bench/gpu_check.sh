#!/usr/bin/env bash
# On a GPU machine: build mmcore._kernels in-tree, run the CUDA tests, then the kernel benchmarks.
# Usage: bash bench/gpu_check.sh [LOG_DIR] [ARCHS]  (logs go to LOG_DIR, default /tmp)
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-/tmp}
ARCHS=${2:-90a}
export PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$LOG/gpu.txt"
start=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DMMCORE_BUILD_TESTS=OFF -DMMCORE_CUDA=ON \
  -DMMCORE_CUDA_ARCHS="$ARCHS" >"$LOG/build.log" 2>&1 &&
  cmake --build build/gpu -j 16 >>"$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
echo "build: $(($(date +%s) - start)) s"
python -m pytest -q -p no:cacheprovider tests/python/test_kernels_cuda.py \
  tests/python/test_kernels_cuda_fused.py tests/python/test_kernel_ops.py \
  tests/python/test_fused_reference.py --maxfail=15 2>&1 | tee "$LOG/pytest.log" | tail -15
python bench/bench_kernels.py "${@:3}" 2>&1 | tee "$LOG/bench.md"
python bench/bench_fused_ops.py 2>&1 | tee "$LOG/bench_fused.jsonl"
