"""CPU serving on a tiny LLaVA: offline Engine.generate vs `mmcore serve` (same workload, same
run, alternating), with and without a busy neighbour process, CPU placement on and off.

    python bench/bench_cpu_serving.py --num-requests 32 --max-tokens 32 --repeats 2

Each request: one photo + a short question, greedy, ``max_tokens`` tokens (ignore_eos). Served
runs start `mmcore serve --device cpu` in a subprocess and send every request at once from an
async client in this process. "busy" runs start a CPU-bound process (a Python spin loop) for
the measurement. Prints one JSON line per run and a summary of req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx2 as httpx
from PIL import Image
from skimage import data as skdata

from serve_process import free_port, start_server, stop_server, wait_healthy

_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def _photos() -> list[Image.Image]:
    return [Image.fromarray(getattr(skdata, n)()).convert("RGB") for n in _PHOTOS]


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _busy_neighbour() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_offline(model: str, n: int, max_tokens: int) -> float:
    """Requests per second of Engine.generate (model built once per call, not timed)."""
    from mmcore import Engine, SamplingParams

    engine = Engine(model, device="cpu", seed=0)
    photos = _photos()
    prompts = [
        {
            "prompt": f"USER: <image>\nQuestion {i} about this picture?\nASSISTANT:",
            "multi_modal_data": {"image": photos[i % len(photos)]},
        }
        for i in range(n)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    engine.generate(prompts[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    engine.generate(prompts, params, use_tqdm=False)
    return n / (time.perf_counter() - start)


async def _send_all(url: str, bodies: list[dict]) -> float:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        responses = await asyncio.gather(
            *(client.post(url + "/v1/chat/completions", json=b) for b in bodies)
        )
        elapsed = time.perf_counter() - start
    bad = [r.status_code for r in responses if r.status_code != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed: {sorted(set(bad))}")
    return len(bodies) / elapsed


def run_served(model: str, n: int, max_tokens: int, placement: bool) -> float:
    """Requests per second of `mmcore serve` (start-up not timed)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, port, extra_args=[] if placement else ["--no-cpu-placement"])
    try:
        wait_healthy(url, process=server)
        urls = [_data_url(p) for p in _photos()]
        bodies = [
            {
                "model": model,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": urls[i % len(urls)]}},
                            {"type": "text", "text": f"Question {i} about this picture?"},
                        ],
                    }
                ],
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "ignore_eos": True,
            }
            for i in range(n)
        ]
        asyncio.run(_send_all(url, bodies[:4]))  # warm-up (media worker processes start)
        return asyncio.run(_send_all(url, bodies))
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: a tiny LLaVA built here)")
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--modes",
        default="offline,served,served-busy,served-noplace,served-noplace-busy,offline-busy",
        help="comma-separated runs, alternated in this order each repeat",
    )
    args = parser.parse_args()
    model = args.model
    if model is None:
        from mmcore.testing.tiny_checkpoints import build_tiny_llava

        model = build_tiny_llava(tempfile.mkdtemp(prefix="tiny_llava_"), seed=0)
    results: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for mode in args.modes.split(","):
            busy = _busy_neighbour() if mode.endswith("-busy") else None
            try:
                if mode.startswith("offline"):
                    rate = run_offline(model, args.num_requests, args.max_tokens)
                else:
                    placement = "noplace" not in mode
                    rate = run_served(model, args.num_requests, args.max_tokens, placement)
            finally:
                if busy is not None:
                    busy.kill()
            results.setdefault(mode, []).append(rate)
            print(json.dumps({"repeat": repeat, "mode": mode, "req_per_s": round(rate, 3)}))
    print(f"# cores in affinity: {len(os.sched_getaffinity(0))}")
    for mode, rates in results.items():
        print(f"{mode:24s} {statistics.median(rates):8.3f} req/s (median of {len(rates)})")


if __name__ == "__main__":
    main()
