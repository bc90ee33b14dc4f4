"""Soak test of `mmcore serve` on the CPU: steady load with client disconnects for a while;
the server's RSS must stop growing after warm-up (<= 5% growth) and no request may fail.

    python bench/soak_serve.py --minutes 10 --concurrency 8

Starts `mmcore serve --device cpu` on a tiny LLaVA (or --model) in a subprocess. Clients loop:
chat requests with an image (every third one streams and disconnects after its first tokens),
some plain completions. The server's RSS is sampled every 5 s. Exit status 1 on any 5xx /
error or too much growth; prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import statistics
import sys
import tempfile
import time

import httpx2 as httpx
from PIL import Image

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from serve_process import free_port, start_server, stop_server, wait_healthy  # noqa: E402


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _image_url(seed: int) -> str:
    rng = random.Random(seed)
    image = Image.new("RGB", (64 + seed % 5 * 40, 48 + seed % 3 * 50), tuple(rng.randbytes(3)))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def _client(url: str, model: str, deadline: float, counts: dict, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=120) as client:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            kind = rng.choice(["chat", "chat", "stream-leave", "completion"])
            try:
                if kind == "completion":
                    body = {"model": model, "prompt": f"count {i}", "max_tokens": 8}
                    r = await client.post(url + "/v1/completions", json=body)
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1
                    continue
                content = [
                    {"type": "image_url", "image_url": {"url": _image_url(rng.randrange(50))}},
                    {"type": "text", "text": f"what is in picture {i}?"},
                ]
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": content}],
                    "max_tokens": 16,
                    "ignore_eos": True,
                }
                if kind == "chat":
                    r = await client.post(url + "/v1/chat/completions", json=body)
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1
                    continue
                body["stream"] = True
                async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1
                    seen = 0
                    async for line in r.aiter_lines():
                        seen += line.startswith("data: ")
                        if seen >= 3:
                            break  # disconnect mid-stream
            except httpx.HTTPError as exc:
                counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1


async def _soak(url: str, model: str, pid: int, minutes: float, concurrency: int) -> dict:
    deadline = time.monotonic() + minutes * 60
    counts: dict = {}
    samples: list[tuple[float, float]] = []
    start = time.monotonic()

    async def sample() -> None:
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - start, _rss_mib(pid)))
            await asyncio.sleep(5)

    await asyncio.gather(
        sample(), *(_client(url, model, deadline, counts, s) for s in range(concurrency))
    )
    return {"counts": counts, "samples": samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: a tiny LLaVA built here)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-fraction", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    model = args.model
    if model is None:
        from mmcore.testing.tiny_checkpoints import build_tiny_llava

        model = build_tiny_llava(tempfile.mkdtemp(prefix="tiny_llava_"), seed=0)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, port)
    try:
        wait_healthy(url, process=server)
        result = asyncio.run(_soak(url, model, server.pid, args.minutes, args.concurrency))
    finally:
        stop_server(server)
    samples = result["samples"]
    warm = [rss for t, rss in samples if t >= args.warmup_fraction * args.minutes * 60]
    after_warmup = statistics.median(warm[: max(1, len(warm) // 5)])
    final = statistics.median(warm[-max(1, len(warm) // 5) :])
    growth = (final - after_warmup) / after_warmup
    errors = {k: v for k, v in result["counts"].items() if not (isinstance(k, int) and k < 500)}
    summary = {
        "minutes": args.minutes,
        "requests": result["counts"],
        "rss_mib_after_warmup": round(after_warmup, 1),
        "rss_mib_final": round(final, 1),
        "rss_growth": round(growth, 4),
        "server_exit_code": server.returncode,
    }
    print(json.dumps(summary))
    return 0 if growth <= 0.05 and not errors and server.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
