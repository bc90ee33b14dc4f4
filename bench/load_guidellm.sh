#!/usr/bin/env bash
# Multimodal synthetic load against `mmcore serve` from a third-party generator (guidellm).
#
#   bench/load_guidellm.sh [MODEL_DIR]
#
# guidellm is not an mmcore dependency (it pulls uvloop/httptools, which would change the
# server's own HTTP stack): install it in a venv of its own, e.g.
#   python -m venv --system-site-packages /tmp/glvenv && /tmp/glvenv/bin/pip install guidellm
# and point GUIDELLM at its CLI. Environment: GUIDELLM (default: guidellm on PATH), STREAMS
# (concurrent streams, 8), REQUESTS (64), IMAGE_WIDTH x IMAGE_HEIGHT (336), PROMPT_TOKENS (48), OUTPUT_TOKENS
# (16), DEVICE (cpu), OUT (guidellm_results.json).
set -euo pipefail
GUIDELLM=${GUIDELLM:-guidellm}
STREAMS=${STREAMS:-8}
REQUESTS=${REQUESTS:-64}
IMAGE_WIDTH=${IMAGE_WIDTH:-336}
IMAGE_HEIGHT=${IMAGE_HEIGHT:-336}
PROMPT_TOKENS=${PROMPT_TOKENS:-48}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-16}
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-guidellm_results.json}
MODEL=${1:-}
if [[ -z "$MODEL" ]]; then
  MODEL=$(python -c "import tempfile; from mmcore.testing.tiny_checkpoints import build_tiny_llava as b; print(b(tempfile.mkdtemp(prefix='tiny_llava_'), seed=0))")
fi
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
python -m mmcore.cli serve "$MODEL" --device "$DEVICE" --port "$PORT" --log-level warning &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.5
done
"$GUIDELLM" run \
  --backend "kind=openai_http,target=http://127.0.0.1:$PORT,model=$MODEL,request_format=/v1/chat/completions" \
  --profile "kind=concurrent,streams=$STREAMS" \
  --constraint "kind=max_requests,count=$REQUESTS" \
  --data "kind=synthetic_image,width=$IMAGE_WIDTH,height=$IMAGE_HEIGHT,images_per_request=1,output_tokens=$OUTPUT_TOKENS" \
  --data "kind=synthetic_text,prompt_tokens=$PROMPT_TOKENS,output_tokens=$OUTPUT_TOKENS" \
  --output "kind=json,path=$OUT" \
  --disable-console-interactive
