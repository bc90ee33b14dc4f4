"""``mmcore bench serve``: stream chat requests at an OpenAI-compatible server and time them.

Requests arrive as a Poisson process at ``request_rate`` per second (``inf``: all at once), at
most ``max_concurrency`` in flight. TTFT is the time to the first streamed content; TPOT the
mean time per token after it; output tokens come from the server's final usage chunk.
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import numpy as np
from tqdm.auto import tqdm

from mmcore.bench.stats import BenchSummary, RequestResult, summarize
from mmcore.bench.workload import BenchRequest

try:
    import httpx2 as httpx
except ImportError:  # the classic package has the same API
    import httpx


def arrival_offsets(num: int, request_rate: float, seed: int = 0) -> list[float]:
    """Start times (seconds from the run's start) of a Poisson process; all zero for ``inf``."""
    if request_rate <= 0:
        raise ValueError(f"request_rate must be > 0 or inf, got {request_rate}")
    if math.isinf(request_rate):
        return [0.0] * num
    gaps = np.random.default_rng(seed).exponential(1.0 / request_rate, size=num)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])]).tolist() if num else []


def _request_body(model: str, req: BenchRequest) -> bytes:
    """The JSON body of one streamed chat request, encoded once before the run: encoding a body
    with an image inside (~0.45 MB) costs 2-7 ms, which inside the timed loop delayed every
    later request's send (3.4 s of a 25 s saturation run on an H200 host, bench/RESULTS.md)."""
    body = {
        "model": model,
        "messages": req.messages(),
        "max_tokens": req.output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def _one_request(client: httpx.AsyncClient, url: str, body: bytes) -> RequestResult:
    start = time.perf_counter()
    ttft = None
    usage = None
    try:
        async with client.stream("POST", url, content=body, headers=_JSON) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return RequestResult(ok=False, error=f"HTTP {response.status_code}: {text[:200]}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    return RequestResult(ok=False, error=str(chunk["error"].get("message")))
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices", []):
                    if ttft is None and choice.get("delta", {}).get("content"):
                        ttft = time.perf_counter() - start
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return RequestResult(ok=False, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - start
    if usage is None:
        return RequestResult(ok=False, error="the stream ended without a usage chunk")
    return RequestResult(
        ok=True,
        output_tokens=int(usage["completion_tokens"]),
        prompt_tokens=int(usage["prompt_tokens"]),
        ttft_s=latency if ttft is None else ttft,
        latency_s=latency,
    )


_JSON = {"Content-Type": "application/json"}


async def _first_model(client: httpx.AsyncClient, base_url: str) -> str:
    response = await client.get(f"{base_url}/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


async def run_serve_bench(
    base_url: str,
    requests: list[BenchRequest],
    *,
    request_rate: float = math.inf,
    max_concurrency: int | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 600.0,
    seed: int = 0,
    progress: bool = True,
) -> BenchSummary:
    """Run the workload against ``base_url`` and summarise it.

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:8000``.
        requests: the workload (see :func:`mmcore.bench.workload.random_mm_requests`).
        request_rate: mean arrivals per second (Poisson), or ``math.inf``.
        max_concurrency: most requests in flight (None: no limit).
        model: model name (default: the server's first model).
        api_key: sent as a Bearer token when given.
        timeout_s: per-request timeout.
        seed: seed of the arrival times.
        progress: show a progress bar.

    Returns:
        Throughput and latency statistics; errors are counted, not raised.
    """
    base_url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limit = max_concurrency or len(requests)
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    offsets = arrival_offsets(len(requests), request_rate, seed)
    semaphore = asyncio.Semaphore(limit)
    bar = tqdm(total=len(requests), desc="bench serve", disable=not progress)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:
        model = model or await _first_model(client, base_url)
        url = f"{base_url}/v1/chat/completions"
        bodies = [_request_body(model, r) for r in requests]
        start = time.perf_counter()

        async def launch(offset: float, body: bytes) -> RequestResult:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            async with semaphore:
                result = await _one_request(client, url, body)
            bar.update(1)
            return result

        results = await asyncio.gather(*(launch(o, b) for o, b in zip(offsets, bodies)))
        duration = time.perf_counter() - start
    bar.close()
    return summarize(list(results), duration)
