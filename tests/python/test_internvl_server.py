"""OpenAI server with a tiny InternVL: image and video parts answered as HF answers, the
per-request ``mm_processor_kwargs`` tiling settings, bad settings refused with 400."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image
from server_fixtures import data_url, png_bytes
from test_internvl_parity import MAX_TOKENS

from mmcore import Engine, SamplingParams
from mmcore.multimodal.video import encode_video, load_video
from mmcore.server import BackgroundServer, ServerConfig
from mmcore.testing.internvl_oracle import hf_greedy, hf_inputs
from mmcore.testing.tiny_internvl import TOKENS_PER_TILE

MODEL = "tiny-internvl"
WIDE = (96, 48)  # a 2x1 grid + thumbnail: 3 tiles


def _clip_bytes() -> bytes:
    ramp = np.linspace(10, 240, 8).astype(np.uint8)
    frames = np.broadcast_to(ramp[:, None, None, None], (8, 32, 48, 3)).copy()
    frames[:, :16, :, 0] = 200
    return encode_video(frames, fps=4)


def _messages(*parts) -> list[dict]:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def served(tiny_internvl_dir):
    config = ServerConfig(model_names=[MODEL], log_level="warning", shutdown_timeout_s=10.0)
    with BackgroundServer(lambda: Engine(tiny_internvl_dir, seed=0), config) as srv:
        yield srv, Engine(tiny_internvl_dir, seed=0)


def _chat(server, messages, **extra) -> requests.Response:
    body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.0}
    return requests.post(server.url + "/v1/chat/completions", json={**body, **extra}, timeout=120)


def test_image_chat_answers_as_hf(served, tiny_internvl_dir):
    server, engine = served
    png = png_bytes(3, WIDE)
    reply = _chat(
        server, _messages({"type": "image_url", "image_url": {"url": data_url(png)}}, "what?")
    )
    assert reply.status_code == 200, reply.text
    text = "<|im_start|>user\n<IMG_CONTEXT>\nwhat?<|im_end|>\n<|im_start|>assistant\n"
    image = Image.open(io.BytesIO(png)).convert("RGB")
    inputs = hf_inputs(tiny_internvl_dir, text, [image], [])
    expected = hf_greedy(tiny_internvl_dir, inputs, MAX_TOKENS)
    body = reply.json()
    assert body["usage"]["prompt_tokens"] == inputs["input_ids"].shape[1]
    assert body["choices"][0]["message"]["content"] == engine.tokenizer.decode(
        expected, skip_special_tokens=True
    )


def test_video_chat_answers_as_engine_chat(served):
    server, engine = served
    clip = _clip_bytes()
    part = {"type": "video_url", "video_url": {"url": data_url(clip, "video/mp4")}}
    reply = _chat(server, _messages(part, "what happens?"))
    assert reply.status_code == 200, reply.text
    expected = engine.chat(
        _messages({"type": "video", "video": clip}, "what happens?"),
        SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS),
        use_tqdm=False,
    )[0]
    frames = load_video(clip).num_frames
    assert reply.json()["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)
    assert (
        expected.prompt_token_ids.count(engine.processor.token_ids["start_image_token"]) == frames
    )
    assert reply.json()["choices"][0]["message"]["content"] == expected.outputs[0].text


def test_mm_processor_kwargs_set_the_tiles_per_request(served):
    server, _ = served
    image = {"type": "image_url", "image_url": {"url": data_url(png_bytes(4, WIDE))}}
    full = _chat(server, _messages(image, "hi")).json()["usage"]["prompt_tokens"]
    one = _chat(server, _messages(image, "hi"), mm_processor_kwargs={"max_dynamic_patch": 1})
    assert one.status_code == 200, one.text
    assert one.json()["usage"]["prompt_tokens"] == full - 2 * TOKENS_PER_TILE


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_dynamic_patch": 0}, "max_dynamic_patch"),
        ({"min_dynamic_patch": 4, "max_dynamic_patch": 2}, "min_dynamic_patch"),
        ({"max_pixels": 100}, "max_pixels"),
    ],
)
def test_bad_tiling_settings_get_400_and_the_server_serves_on(served, kwargs, fragment):
    server, _ = served
    image = {"type": "image_url", "image_url": {"url": data_url(png_bytes(5))}}
    reply = _chat(server, _messages(image, "x"), mm_processor_kwargs=kwargs)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]["message"]
    assert _chat(server, _messages("hello")).status_code == 200
