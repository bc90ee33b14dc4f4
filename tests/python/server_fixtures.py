"""Fixtures and helpers of the server tests: a served tiny LLaVA, an oracle engine, images."""

from __future__ import annotations

import base64
import functools
import io
import socket
import time

import numpy as np
import pytest
from PIL import Image

from mmcore import Engine
from mmcore.server import BackgroundServer, MediaPolicy, ServerConfig

MODEL_NAME = "tiny-llava"
MAX_IMAGES = 2
MAX_REQUEST_BYTES = 2 << 20
MEDIA_HOST = "127.0.0.1"


def png_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small random RGB image as PNG bytes (same seed, same image)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts) -> list[dict]:
    """One user message from text strings and image parts."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return [{"role": "user", "content": content}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    """An allowed local media folder with one image, plus a secret image outside it."""
    root = tmp_path_factory.mktemp("media")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "cat.png").write_bytes(png_bytes(7))
    (root / "secret.png").write_bytes(png_bytes(8))
    (allowed / "escape.png").symlink_to(root / "secret.png")
    return allowed


@pytest.fixture(scope="module")
def oracle(tiny_llava_dir):
    """An Engine of its own, for the answers the server must reproduce."""
    return Engine(tiny_llava_dir, seed=0)


def served_tiny_llava(tiny_llava_dir: str, media_dir, engine_core_process: bool = False):
    """A server over the tiny LLaVA (not started: use it as a context manager).

    Its engine overlaps steps (async scheduling, the CUDA default) so every server test also
    checks that the overlapped engine answers as the synchronous ``oracle``. It is built on the
    server's engine thread (or in its engine core process), as ``mmcore serve`` builds it."""
    engine = functools.partial(
        Engine,
        tiny_llava_dir,
        seed=0,
        async_scheduling=True,
        limit_mm_per_prompt={"image": MAX_IMAGES},
        allowed_local_media_path=str(media_dir),
    )
    config = ServerConfig(
        model_names=[MODEL_NAME],
        max_request_bytes=MAX_REQUEST_BYTES,
        media=MediaPolicy(
            allowed_domains=[MEDIA_HOST],
            allowed_local_media_path=str(media_dir),
            max_bytes=1 << 20,
            timeout_s=5.0,
            max_images=MAX_IMAGES,
        ),
        log_level="warning",
        shutdown_timeout_s=10.0,
        engine_core_process=engine_core_process,
    )
    return BackgroundServer(engine, config)


@pytest.fixture(scope="module")
def server(tiny_llava_dir, media_dir):
    """A server over the tiny LLaVA on a free loopback port, for the whole module."""
    with served_tiny_llava(tiny_llava_dir, media_dir) as srv:
        yield srv


@pytest.fixture(scope="module", params=[False, True], ids=["engine-thread", "engine-core-process"])
def server_both_modes(request, tiny_llava_dir, media_dir):
    """The tiny LLaVA server with its engine on a thread, then in an engine core process."""
    with served_tiny_llava(tiny_llava_dir, media_dir, engine_core_process=request.param) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60, max_retries=0)
