# ruff: noqa: F811  (fixtures imported from server_fixtures are parameters here)
"""Many concurrent streams, some clients leaving early: no 5xx and every KV block comes back."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests
from server_fixtures import (  # noqa: F401  (pytest fixtures)
    MODEL_NAME,
    data_url,
    image_part,
    media_dir,
    png_bytes,
    server_both_modes,
    user,
    wait_until,
)

try:
    import httpx2 as httpx
except ImportError:
    import httpx

NUM_CLIENTS = 200
MAX_TOKENS = 24
LEAVER_MAX_TOKENS = 400


@pytest.fixture(scope="module")
def server(server_both_modes):
    """This module's tests run against the engine thread and the engine core process."""
    return server_both_modes


async def _stream_one(client, url: str, i: int, image: dict) -> tuple[int, str, bool]:
    """Stream one chat; every fifth client disconnects after its first content chunk."""
    leaves_early = i % 5 == 0
    parts = (image, f"question number {i}") if i % 2 else (f"question number {i}",)
    body = {
        "model": MODEL_NAME,
        "messages": user(*parts),
        # A client that leaves asks for many tokens, so only an abort can end it in time.
        "max_tokens": LEAVER_MAX_TOKENS if leaves_early else MAX_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
    }
    text = ""
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            return response.status_code, (await response.aread()).decode(), False
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            for choice in chunk.get("choices", []):
                text += choice["delta"].get("content") or ""
            if leaves_early and text:
                return 200, text, True  # closing the stream drops the connection
    return 200, text, False


async def _run(url: str) -> list[tuple[int, str, bool]]:
    limits = httpx.Limits(max_connections=NUM_CLIENTS, max_keepalive_connections=0)
    image = image_part(data_url(png_bytes(5)))
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return await asyncio.gather(
            *(_stream_one(client, url, i, image) for i in range(NUM_CLIENTS))
        )


def _aborted(server) -> float:
    for line in requests.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith('mmcore_requests_finished_total{finish_reason="abort"}'):
            return float(line.split()[-1])
    return 0.0


def test_concurrent_streams_with_disconnects_free_every_block(server):
    aborted_before = _aborted(server)
    steps_before = server.state.engine.stats()["num_steps"]
    results = asyncio.run(_run(server.url + "/v1/chat/completions"))
    statuses = [status for status, _, _ in results]
    assert all(s == 200 for s in statuses), [r for r in results if r[0] != 200][:3]
    left = [r for r in results if r[2]]
    assert len(left) == NUM_CLIENTS // 5
    stayed = [text for _, text, early in results if not early]
    assert all(text for text in stayed)
    engine = server.state.engine
    assert wait_until(
        lambda: (
            engine.stats()["kv_blocks_used"] == 0 and engine.stats()["num_active_requests"] == 0
        ),
        timeout_s=30,
    ), engine.stats()
    assert engine.stats()["num_running"] == engine.stats()["num_waiting"] == 0
    # Clients shared batches: far fewer steps than one request at a time would take.
    assert engine.stats()["num_steps"] - steps_before < NUM_CLIENTS * MAX_TOKENS // 4
    # Every client that left was aborted (none ran its 400 tokens).
    assert _aborted(server) - aborted_before == len(left)
