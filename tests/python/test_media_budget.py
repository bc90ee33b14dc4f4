"""Media is paid for only after its cost is known: image sizes from headers, the request's pixel
budget and the prompt-fit check come before any decoding; decoding can run in worker processes;
a burst of large images keeps peak RSS within the configured budget."""

from __future__ import annotations

import concurrent.futures
import io
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from server_fixtures import MODEL_NAME, data_url, image_part, user, wait_until

import mmcore.multimodal.media as media_module
from mmcore import Engine
from mmcore.multimodal.media_budget import MediaBudget
from mmcore.multimodal.media_processes import MediaProcessPool
from mmcore.server import BackgroundServer, ServerConfig


def _png(width: int, height: int, seed: int = 0) -> bytes:
    """A flat-coloured PNG: a few KB on disk, width x height x 3 bytes once decoded."""
    buf = io.BytesIO()
    colour = tuple(int(c) for c in np.random.default_rng(seed).integers(0, 256, 3))
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    return Engine(tiny_llava_dir, seed=0)


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = media_module.load_image  # what the processor's image loader decodes with
    monkeypatch.setattr(
        media_module, "load_image", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    return calls


def _prompt(images: list[bytes], text: str = "what is it") -> dict:
    marks = "".join("<image>" for _ in images)
    return {"prompt": f"USER: {marks}\n{text}\nASSISTANT:", "multi_modal_data": {"image": images}}


def test_request_pixel_budget_refuses_before_decoding(engine, count_decodes):
    big = _png(8000, 8000)
    assert len(big) < 300_000  # a small body that would decode to 192 MB
    saved = engine.inputs.budget
    engine.inputs.budget = MediaBudget(max_request_pixels=5_000_000)
    try:
        with pytest.raises(ValueError, match="refused before decoding"):
            engine.inputs.process(_prompt([big]))
        with pytest.raises(ValueError, match="pixels in all"):
            engine.inputs.process(_prompt([_png(2000, 2000), _png(1000, 1500, 1)]))
        assert count_decodes == []
        engine.inputs.process(_prompt([_png(2000, 2000)]))
        assert count_decodes == [1]
    finally:
        engine.inputs.budget = saved


def test_a_prompt_that_cannot_fit_is_refused_before_decoding(engine, count_decodes):
    room = engine.max_model_len - 8  # the image alone expands to more than 8 tokens
    ids = engine.tokenizer("hi")["input_ids"]
    image_id = engine.tokenizer.convert_tokens_to_ids("<image>")
    prompt = {
        "prompt_token_ids": [ids[0]] * room + [image_id],
        "multi_modal_data": {"image": _png(64, 64)},
    }
    with pytest.raises(ValueError, match="max_model_len"):
        engine.inputs.process(prompt)
    assert count_decodes == []


def test_warm_up_returns_once_the_workers_have_started(engine):
    pool = MediaProcessPool(
        engine.processor, 1, model_id="m", max_image_pixels=engine.inputs.max_image_pixels
    )
    try:
        assert not pool.ready
        pool.warm_up(timeout_s=300)
        # Nothing is left queued: a worker has loaded the processor and answered (a warm-up
        # that only started the workers returns while they still import torch, for seconds).
        assert pool.ready and not pool._executor._pending_work_items
    finally:
        pool.shutdown()


def test_worker_processes_give_the_same_items_as_threads(engine):
    images = [_png(300, 200, 3), _png(64, 640, 4)]
    expected = engine.inputs.process(_prompt(images))
    engine.inputs.cache.clear()
    pool = MediaProcessPool(
        engine.processor,
        1,
        model_id=engine.inputs.model_id,
        max_image_pixels=engine.inputs.max_image_pixels,
    )
    engine.inputs.media_pool = pool
    try:
        got = engine.inputs.process(_prompt(images))
        with pytest.raises(ValueError, match="not in a known image format"):
            engine.inputs.process(_prompt([b"\x89PNG\r\n\x1a\nbroken"]))
    finally:
        engine.inputs.media_pool = None
        pool.shutdown()
    assert np.array_equal(got.token_ids, expected.token_ids)
    for a, b in zip(got.items, expected.items):
        assert a.identifier == b.identifier and a.num_embeds == b.num_embeds
        assert torch.equal(a.data["pixel_values"], b.data["pixel_values"])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_peak_rss_stays_within_the_media_budget_under_a_burst(tiny_llava_dir):
    budget_pixels = 4_000_000
    workers = 2
    config = ServerConfig(
        model_names=[MODEL_NAME],
        log_level="critical",
        input_workers=workers,
        max_request_pixels=budget_pixels,
        max_request_bytes=8 << 20,
    )
    with BackgroundServer(lambda: Engine(tiny_llava_dir, seed=0), config) as srv:
        url = srv.url + "/v1/chat/completions"
        fits = [image_part(data_url(_png(1400, 1400, i))) for i in range(2)]  # 3.9 M pixels
        bomb = image_part(data_url(_png(8000, 8000)))
        good = {"model": MODEL_NAME, "messages": user(*fits, "hi"), "max_tokens": 1}
        bad = {"model": MODEL_NAME, "messages": user(bomb, "hi"), "max_tokens": 1}
        assert requests.post(url, json=good, timeout=60).status_code == 200  # warm-up
        baseline, peak, done = _rss_bytes(), [0], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        bodies = [good, bad] * 12
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda b: requests.post(url, json=b, timeout=120), bodies))
        done.set()
        watcher.join()
        assert [c.status_code for c in codes] == [200, 400] * 12
        assert "refused before decoding" in codes[1].json()["error"]["message"]
        growth = peak[0] - baseline
        # Each input worker holds at most one request's decoded images (3 bytes a pixel) and
        # the processor's copies of them; a single decoded bomb would be 192 MB.
        bound = workers * budget_pixels * 3 * 8
        assert growth < bound, f"peak RSS grew {growth / 2**20:.0f} MiB (bound {bound / 2**20:.0f})"


def test_media_workers_exit_when_their_server_is_killed(tmp_path):
    """A SIGKILLed server cannot shut its pool down: the workers notice and leave (no orphans
    holding its stdout)."""
    script = (
        "import os, sys\n"
        "from mmcore.multimodal.media_processes import MediaProcessPool\n"
        "pool = MediaProcessPool(None, 2, model_id='m', max_image_pixels=10)\n"
        "pids = {pool._executor.submit(os.getpid).result() for _ in range(8)}\n"
        "print(' '.join(map(str, pids)), flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert pids and proc.pid not in pids
    proc.kill()
    proc.wait()

    def gone(pid: int) -> bool:  # exited (a zombie waiting for init to reap it counts)
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0] == "Z"
        except FileNotFoundError:
            return True

    assert wait_until(lambda: all(gone(p) for p in pids), timeout_s=20, interval_s=0.2)
