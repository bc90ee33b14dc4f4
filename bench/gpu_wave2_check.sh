#!/usr/bin/env bash
# On a GPU machine, wave 2 checks in one call: build mmcore (core + CUDA kernels for sm90a), then
# stages, each under its own time limit so a slow one leaves the others' results:
#   tests       M-RoPE rope kernel, device sampling (no host sync, grammars under graphs), Qwen2-VL
#               processor vs HF's (torchvision) and the Qwen2-VL engine on CUDA
#   structured  structured-output overhead: 256 requests with a JSON schema vs without
#   qwen        Qwen2.5-VL-7B dummy: offline req/s vs HF generate() and the roofline; packed ViT
#   tp          (2 GPUs) peer all-reduce and TP=2 GPU tests; bench_gpu_tp.py: LLaVA-1.5-7B TP=2
#               (peer all-reduce, NCCL) vs TP=1, profiler traces
#   tp_more     (2 GPUs) Qwen2.5-VL-7B TP=2 vs TP=1; a 70B LM at TP=2 against its ITL bound
#   internvl    InternVL processor vs HF's (torchvision), engine on CUDA vs HF; InternVL3-8B
#               dummy: offline req/s vs HF generate() and the roofline, batch-1 ITL vs the bound
#   gemma       Gemma 3 on CUDA vs HF; Gemma-3-12B dummy: offline req/s vs HF, KV at 8k prompts
#   fp8         FP8 GEMM, weight-only GEMV and engine GPU tests; LLaVA-1.5-7B dummy bf16 vs fp8 weights (req/s, ITL, KL)
#   video       Qwen2.5-VL-7B dummy: 100 requests with a 32-frame 448x448 clip (req/s, TTFT, ViT share)
#   demo_train_bg  the demo model's training in the background on GPU $DEMO_GPU (default 1)
#   demo_wait   wait (up to $DEMO_WAIT_S s) for that training to end; its summary
#   backend_idefics  Transformers backend vs HF generate() on Idefics3-8B dummy (bf16): 200
#               requests of one 364 px image (17 tiles, 2873 embeddings) + ~64 text tokens
#   build       nothing after the build (a first call that leaves build/gpu for the next ones)
#   kernels     attention kernels vs the torch reference (head dims 16-256, image spans, FP8 KV,
#               graphs) and the FP8-KV engine
#   kernels_bench  bench_gpu_kernels_wave2.py: d72 / d256 vs SDPA, FP8-KV decode vs bf16 against
#               copy bandwidth
#   decode      the decode-path attention tests (splits, mixed steps, launch plan, graphs), then
#               bench_kernels.py's decode table (both split granularities) and the batch-1
#               bf16 / FP8-KV decode against copy bandwidth
#   sanitize    compute-sanitizer (memcheck, synccheck, racecheck) over the Hopper attention
#               kernel's small launches, bf16 and FP8 caches, and the FP8 decode kernel
#               (gpu_sanitize_attention.py)
#   gemv        the dense decode GEMV's tests, then bench_gpu_gemv.py: it against cuBLAS per shape
#   pdl         bench_gpu_latency.py with MMCORE_PDL=0 / 1 alternating (programmatic dependent
#               launch of the decode step's kernels, on by default: batch-1 ITL, batch 2-8 steps)
#   decode_probe  profile_gpu_decode_kernels.py: every kernel of a batch-1 decode step
#   attn_probe  probe_gpu_decode_attention.py: batch-1 decode attention at forced KV splits vs
#               SDPA flash, a copy of the KV bytes and an empty launch
#   step_bound  probe_gpu_step_bound.py: the batch-1 decode graph replayed back to back vs the
#               engine's step period, and where the host thread's time goes (cProfile)
#   serving     bench_gpu_serving.py: LLaVA-1.5-7B dummy, 500 requests through Engine.generate vs
#               `mmcore serve` (served / offline ratio), then TTFT / TPOT at 50% and 90% of the
#               served saturation rate
# Usage: bash bench/gpu_wave2_check.sh LOG_DIR [STAGE ...]
# Python packages the machine lacks travel as wheels in .whl (see the device notes).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-/tmp}
shift
STAGES=${*:-tests structured qwen}
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
  grep -E "passed|failed|Error|ratio|req_per_s|speedup|^vit " "$LOG/$name.log" | cut -c1-400 | tail -15
}
for s in $STAGES; do
  case $s in
    tests) stage tests 150 python3 -m pytest -q -p no:cacheprovider tests/python/test_mrope.py \
      tests/python/test_gpu_sampling.py tests/python/test_qwen2_vl_gpu.py ;;
    structured) stage structured 150 python3 bench/bench_gpu_structured_outputs.py \
      --out "$LOG" --repeats 2 ;;
    qwen) stage qwen_vit 60 python3 bench/bench_gpu_qwen2_vl.py --stage vit --repeats 3 --out "$LOG"
      stage qwen_images 200 python3 bench/bench_gpu_qwen2_vl.py --stage images \
        --num-requests 300 --hf-batch-sizes 32 64 --repeats 1 --out "$LOG" ;;
    tp) stage tp_tests 200 python3 -m pytest -q -p no:cacheprovider \
      tests/python/test_gpu_peer_all_reduce.py tests/python/test_gpu_tensor_parallel.py
      stage tp_7b 330 python3 bench/bench_gpu_tp.py --out "$LOG" --sections 7b --num-requests 200 \
        --profile-dir "$LOG/prof"
      cp "$LOG/results_gpu_tp.json" "$LOG/results_gpu_tp_7b.json" 2>/dev/null ;;
    tp_more) stage tp_qwen 200 python3 bench/bench_gpu_tp.py --out "$LOG" --sections qwen7b
      cp "$LOG/results_gpu_tp.json" "$LOG/results_gpu_tp_qwen.json" 2>/dev/null
      stage tp_70b 200 python3 bench/bench_gpu_tp.py --out "$LOG" --sections 70b --num-requests 64 ;;
    internvl) stage internvl_tests 180 python3 -m pytest -q -p no:cacheprovider \
      tests/python/test_internvl_gpu.py
      stage internvl_images 240 python3 bench/bench_gpu_internvl.py --stage images \
        --num-requests 200 --hf-batch-sizes 16 32 --out "$LOG"
      stage internvl_latency 120 python3 bench/bench_gpu_internvl.py --stage latency --out "$LOG" ;;
    gemma) stage gemma_tests 150 python3 -m pytest -q -p no:cacheprovider tests/python/test_gemma3_gpu.py
      stage gemma_offline 240 python3 bench/bench_gpu_gemma3.py --stage offline --num-requests 200 \
        --hf-batch-sizes 16 32 --out "$LOG"
      stage gemma_kv 150 python3 bench/bench_gpu_gemma3.py --stage kv --out "$LOG" ;;
    fp8) stage fp8_tests 180 python3 -m pytest -q -p no:cacheprovider tests/python/test_fp8_cuda.py \
      tests/python/test_fp8_gemv_cuda.py
      stage fp8_bench 300 python3 bench/bench_gpu_fp8.py --num-requests 300 --demo-n 200 \
        --out "$LOG" ;;
    kernels) stage kernels_tests 480 python3 -m pytest -q -p no:cacheprovider --maxfail=40 \
      tests/python/test_kernels_cuda.py tests/python/test_kernels_cuda_spans_fp8.py \
      tests/python/test_gpu_fp8_kv.py tests/python/test_kernels_cuda_fused.py
      grep -E "^FAILED|^ERROR" "$LOG/kernels_tests.log" | cut -c1-300 | head -40 ;;
    kernels_bench) stage kernels_bench 300 python3 bench/bench_gpu_kernels_wave2.py --out "$LOG"
      cat "$LOG/kernels_bench.log" ;;
    decode) stage decode_tests 150 python3 -m pytest -q -p no:cacheprovider \
      tests/python/test_kernels_cuda.py tests/python/test_kernels_cuda_spans_fp8.py \
      tests/python/test_gpu_fp8_kv.py -k "split or short or mixed or plan or decode or graph or fp8"
      grep -E "^FAILED|^ERROR" "$LOG/decode_tests.log" | cut -c1-300 | head -20
      stage decode_table 120 python3 bench/bench_kernels.py --only decode
      grep -E "^\|" "$LOG/decode_table.log"
      stage decode_fp8 90 python3 bench/bench_gpu_kernels_wave2.py --quick --out "$LOG"
      grep -A6 "Decode batch 1" "$LOG/decode_fp8.log" ;;
    sanitize) for tool in memcheck synccheck racecheck; do
        dims=64,72,80,128,256; [ "$tool" = racecheck ] && dims=64,80
        stage "sanitize_$tool" 120 compute-sanitizer --tool "$tool" --kernel-name kns=attention_sm90 \
          python3 bench/gpu_sanitize_attention.py --dims "$dims"
        grep -E "SUMMARY" "$LOG/sanitize_$tool.log"
        stage "sanitize_fp8_$tool" 90 compute-sanitizer --tool "$tool" --kernel-name \
          kns=attention_sm90 python3 bench/gpu_sanitize_attention.py --fp8 --dims 64,128
        grep -E "SUMMARY" "$LOG/sanitize_fp8_$tool.log"
        stage "sanitize_fp8_decode_$tool" 90 compute-sanitizer --tool "$tool" --kernel-name \
          kns=attention_decode_fp8 python3 bench/gpu_sanitize_attention.py --fp8 --decode --dims 128
        grep -E "SUMMARY" "$LOG/sanitize_fp8_decode_$tool.log"
      done ;;
    gemv) stage gemv_tests 100 python3 -m pytest -q -p no:cacheprovider \
      tests/python/test_dense_gemv_cuda.py
      stage gemv_bench 90 python3 bench/bench_gpu_gemv.py --rows 1,2,4 --out "$LOG/gemv.json" ;;
    pdl) for pdl in 0 1 0 1; do  # alternating, for the spread
        MMCORE_PDL=$pdl stage "latency_pdl$pdl" 90 python3 bench/bench_gpu_latency.py --out /tmp
        grep -E "^latency" "$LOG/latency_pdl$pdl.log"
      done ;;
    decode_probe) stage decode_probe 150 python3 bench/profile_gpu_decode_kernels.py
      grep -E "^###|^\| [0-9]" "$LOG/decode_probe.log" | head -40 ;;
    attn_probe) stage attn_probe 120 python3 bench/probe_gpu_decode_attention.py
      grep -E "^\|" "$LOG/attn_probe.log" ;;
    step_bound) stage step_bound 150 python3 bench/probe_gpu_step_bound.py
      grep -E "graph replay|step period|cProfile" "$LOG/step_bound.log" ;;
    serving) stage serving 480 python3 bench/bench_gpu_serving.py --out "$LOG"
      grep WARNING "$LOG/serving.log"
      tail -5 "$LOG/serving_server.log" 2>/dev/null | cut -c1-300 ;;
    video) stage qwen_video 240 python3 bench/bench_gpu_qwen2_vl.py --stage video --out "$LOG" ;;
    demo_train_bg) # the demo model's training on GPU ${DEMO_GPU:-1}, in the background
      CUDA_VISIBLE_DEVICES=${DEMO_GPU:-1} setsid nohup python3 -m mmcore.demo.train \
        --out "$LOG/demo_ckpt" --device cuda --minutes "${DEMO_MINUTES:-7}" \
        --pictures-per-batch 256 --questions-per-picture 4 --workers 20 \
        >"$LOG/demo_train.log" 2>&1 &
      echo "demo training started on GPU ${DEMO_GPU:-1}" | tee -a "$LOG/run.log" ;;
    demo_wait) for _ in $(seq 1 ${DEMO_WAIT_S:-300}); do
        pgrep -f mmcore.demo.train >/dev/null || break; sleep 1; done
      tail -12 "$LOG/demo_train.log" | cut -c1-600 ;;
    backend_idefics) stage backend_idefics 200 python3 bench/bench_gpu_transformers_backend.py \
      --model idefics3-8b --num-requests 200 --hf-requests 64 --hf-batch-size 32 --max-tokens 64 \
      --out "$LOG/results_transformers_backend_idefics3.json" ;;
    build) ;;
    *) echo "unknown stage $s" ;;
  esac
done
