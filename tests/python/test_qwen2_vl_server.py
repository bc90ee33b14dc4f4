"""OpenAI server with a Qwen2.5-VL: video_url parts (same URL policy as images) and the
per-request ``mm_processor_kwargs`` field, answered as Engine.chat answers."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from server_fixtures import data_url, png_bytes

from mmcore import Engine, SamplingParams
from mmcore.multimodal.video import encode_video
from mmcore.server import BackgroundServer, MediaPolicy, ServerConfig

MODEL = "tiny-qwen"
MAX_TOKENS = 4


def _clip_bytes() -> bytes:
    ramp = np.linspace(10, 240, 8).astype(np.uint8)
    frames = np.broadcast_to(ramp[:, None, None, None], (8, 32, 48, 3)).copy()
    frames[:, :16, :, 0] = 200
    return encode_video(frames, fps=4)


def _messages(*parts) -> list[dict]:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return [{"role": "user", "content": content}]


def _video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen_media")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "clip.mp4").write_bytes(_clip_bytes())
    (root / "secret.mp4").write_bytes(_clip_bytes())
    return allowed


@pytest.fixture(scope="module")
def served(tiny_qwen2_5_vl_dir, media):
    def engine():
        return Engine(tiny_qwen2_5_vl_dir, seed=0, allowed_local_media_path=str(media))

    config = ServerConfig(
        model_names=[MODEL],
        media=MediaPolicy(allowed_local_media_path=str(media)),
        log_level="warning",
        shutdown_timeout_s=10.0,
    )
    with BackgroundServer(engine, config) as srv:
        yield srv, Engine(tiny_qwen2_5_vl_dir, seed=0, allowed_local_media_path=str(media))


def _chat(server, messages, **extra) -> requests.Response:
    body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.0}
    return requests.post(server.url + "/v1/chat/completions", json={**body, **extra}, timeout=120)


def test_video_url_parts_answer_as_engine_chat(served, media):
    server, oracle = served
    messages = _messages(
        _video_part(data_url(_clip_bytes(), "video/mp4")),
        "and",
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(3))}},
        "what happens?",
    )
    reply = _chat(server, messages)
    assert reply.status_code == 200, reply.text
    local = _chat(
        server,
        _messages(_video_part("clip.mp4"), "and", messages[0]["content"][2], "what happens?"),
    )
    expected = oracle.chat(
        _messages(
            {"type": "video", "video": _clip_bytes()},
            "and",
            {"type": "image_url", "image_url": {"url": data_url(png_bytes(3))}},
            "what happens?",
        ),
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
        use_tqdm=False,
    )[0]
    for answer in (reply, local):
        body = answer.json()
        assert body["choices"][0]["message"]["content"] == expected.outputs[0].text
        assert body["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)


def test_mm_processor_kwargs_field_applies_per_request(served):
    server, _ = served
    messages = _messages(
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(4, (64, 64)))}}, "hi"
    )
    full = _chat(server, messages).json()["usage"]["prompt_tokens"]
    small = _chat(server, messages, mm_processor_kwargs={"max_pixels": 256})
    assert small.status_code == 200, small.text
    assert small.json()["usage"]["prompt_tokens"] == full - 64 + 4  # 8x8 -> 2x2 merged patches


@pytest.mark.parametrize(
    "messages,extra,fragment",
    [
        (_messages(_video_part("data:video/mp4;base64,AAAAAAAA"), "x"), {}, "could not be decoded"),
        (_messages(_video_part("../secret.mp4"), "x"), {}, "outside the allowed"),
        (_messages(_video_part("http://127.0.0.1:9/a.mp4"), "x"), {}, "not allowed"),
        (_messages("x"), {"mm_processor_kwargs": {"crop_size": 3}}, "crop_size"),
        (
            _messages("x"),
            {"mm_processor_kwargs": {"min_pixels": 900, "max_pixels": 100}},
            "min_pixels",
        ),
    ],
    ids=["undecodable", "outside_folder", "host_not_allowed", "unknown_kwarg", "min_above_max"],
)
def test_bad_video_requests_get_400_and_the_server_serves_on(served, messages, extra, fragment):
    server, _ = served
    reply = _chat(server, messages, **extra)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]["message"]
    assert _chat(server, _messages("hello")).status_code == 200
