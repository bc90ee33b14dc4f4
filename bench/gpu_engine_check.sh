#!/usr/bin/env bash
# On a GPU machine: build mmcore (core + CUDA kernels) in-tree, run the GPU engine tests, then the
# benchmarks, each stage under its own time limit so a slow stage leaves the others' results:
# idle gap between decode steps with / without overlapped scheduling (bench_gpu_overlap.py),
# image-heavy LLaVA-NeXT throughput (bench_gpu_images.py), offline throughput vs HF
# (bench_gpu_offline.py). Usage: bash bench/gpu_engine_check.sh LOG_DIR NUM_REQUESTS [ARCHS]
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-/tmp}
NUM=${2:-1000}
ARCHS=${3:-90a}
export PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$LOG/run.log"
start=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DMMCORE_BUILD_TESTS=OFF -DMMCORE_CUDA=ON \
  -DMMCORE_CUDA_ARCHS="$ARCHS" >"$LOG/build.log" 2>&1 &&
  cmake --build build/gpu -j 16 >>"$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
echo "build: $(($(date +%s) - start)) s" | tee -a "$LOG/run.log"
stage() {  # stage SECONDS COMMAND...: run with a time limit, log its duration
  local limit=$1 t0
  shift
  t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG/run.log" | grep -E "^(overlap|images|mmcore|hf|machine|roofline) |passed|failed|GPU bf16|graphs ==|Error" | cut -c1-400
  echo "stage $1 $2: rc ${PIPESTATUS[0]}, $(($(date +%s) - t0)) s" | tee -a "$LOG/run.log"
}
stage 150 python -m pytest -q -s -p no:cacheprovider tests/python/test_gpu_engine.py
stage 80 python bench/bench_gpu_overlap.py --batch 64 --repeats 2 --out "$LOG"
stage 100 python bench/bench_gpu_images.py --num-requests 40 --out "$LOG"
stage 150 python bench/bench_gpu_offline.py --num-requests "$NUM" --modes graphs sync \
  --sweep 16 64 128 --out "$LOG"
