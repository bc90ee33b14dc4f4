#!/usr/bin/env bash
# On a GPU machine: build mmcore (core + CUDA kernels) in-tree, then run the chosen stages, each
# under its own time limit so a slow stage leaves the others' results:
#   tests    GPU engine tests, fused-op kernel tests, the trained demo model on the GPU
#   fused    fused elementwise kernels vs their unfused torch references (bench_fused_ops.py)
#   latency  batch-1 TTFT / inter-token latency and small-batch step periods vs the ITL bound
#   timeline wall time of the offline run split into input processing, GPU busy and GPU idle
#   profile  GPU time per step by kernel category (profile_gpu_steps.py)
#   overlap  idle gap between decode steps with / without overlapped scheduling
#   images   image-heavy LLaVA-NeXT throughput, encoder / prefix cache hits
#   offline  offline throughput vs HF generate() and the roofline, batch-size sweep
# Usage: bash bench/gpu_engine_check.sh LOG_DIR NUM_REQUESTS [ARCHS] [STAGE ...]
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-/tmp}
NUM=${2:-1000}
ARCHS=${3:-90a}
shift $(($# < 3 ? $# : 3))
STAGES=${*:-tests fused profile overlap images offline}
export PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$LOG/run.log"
start=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DMMCORE_BUILD_TESTS=OFF -DMMCORE_CUDA=ON \
  -DMMCORE_CUDA_ARCHS="$ARCHS" >"$LOG/build.log" 2>&1 &&
  cmake --build build/gpu -j 16 >>"$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
echo "build: $(($(date +%s) - start)) s" | tee -a "$LOG/run.log"
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log its duration
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG/$name.log" |
    grep -E "^(overlap|images|mmcore|hf|machine|roofline|fused|profile|latency|timeline) |^\{\"op\"|passed|failed|GPU (bf16|float16|bfloat16)|graphs ==|Error" |
    cut -c1-600
  echo "stage $name: rc ${PIPESTATUS[0]}, $(($(date +%s) - t0)) s" | tee -a "$LOG/run.log"
}
for s in $STAGES; do
  case $s in
    tests) stage tests 240 python -m pytest -q -s -p no:cacheprovider \
      tests/python/test_gpu_engine.py tests/python/test_kernels_cuda_fused.py \
      tests/python/test_gpu_demo_model.py ;;
    kernels) stage kernels 240 python -m pytest -q -p no:cacheprovider \
      tests/python/test_kernels_cuda.py tests/python/test_kernel_ops.py ;;
    fused) stage fused 60 python bench/bench_fused_ops.py ;;
    latency) stage latency 120 python bench/bench_gpu_latency.py --out "$LOG" ;;
    timeline) stage timeline 150 python bench/bench_gpu_timeline.py --num-requests "$NUM" --out "$LOG" ;;
    profile) stage profile 200 python bench/profile_gpu_steps.py --out "$LOG" ;;
    overlap) stage overlap 80 python bench/bench_gpu_overlap.py --batch 64 --repeats 1 --out "$LOG" ;;
    images) stage images 120 python bench/bench_gpu_images.py --num-requests 40 --out "$LOG" ;;
    offline) stage offline 330 python bench/bench_gpu_offline.py --num-requests "$NUM" \
      --modes graphs sync --sweep 16 64 128 --out "$LOG" ;;
    *) echo "unknown stage $s" ;;
  esac
done
