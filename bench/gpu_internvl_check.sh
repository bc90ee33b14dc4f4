#!/usr/bin/env bash
# On a GPU machine, the InternVL checks in one call: build mmcore (core + CUDA kernels for
# sm90a), then stages, each under its own time limit so a slow one leaves the others' results:
#   tests    mmcore's processor vs HF's InternVLProcessor (torchvision), frame sampling vs HF,
#            the InternVL engine on CUDA vs HF (fp32) and graphs vs eager (bf16)
#   images   InternVL3-8B dummy: offline req/s vs HF generate() at its best batch and the roofline
#   latency  InternVL3-8B dummy: batch-1 TTFT / ITL vs the ITL bound
# Usage: bash bench/gpu_internvl_check.sh LOG_DIR [STAGE ...]
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-/tmp}
shift
STAGES=${*:-tests images latency}
export PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee -a "$LOG/run.log"
start=$(date +%s)
cmake -S . -B build/gpu -G Ninja -DMMCORE_BUILD_TESTS=OFF -DMMCORE_CUDA=ON \
  -DMMCORE_CUDA_ARCHS=90a >"$LOG/build.log" 2>&1 &&
  cmake --build build/gpu -j 16 >>"$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
echo "build: $(($(date +%s) - start)) s" | tee -a "$LOG/run.log"
stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
  echo "stage $name: rc $?, $(($(date +%s) - t0)) s" | tee -a "$LOG/run.log"
  grep -E "passed|failed|Error|req_per_s|speedup|itl" "$LOG/$name.log" | cut -c1-400 | tail -15
}
for s in $STAGES; do
  case $s in
    tests) stage tests 180 python3 -m pytest -q -p no:cacheprovider tests/python/test_internvl_gpu.py ;;
    images) stage internvl_images 300 python3 bench/bench_gpu_internvl.py --stage images \
      --num-requests 200 --hf-batch-sizes 16 32 --out "$LOG" ;;
    latency) stage internvl_latency 150 python3 bench/bench_gpu_internvl.py --stage latency \
      --out "$LOG" ;;
    *) echo "unknown stage $s" ;;
  esac
done
