"""OpenAI server over a Transformers-backend model (Idefics3, no native code): chat with an
image answers as HF generate() does, and bad settings get a 400 while the server serves on."""

from __future__ import annotations

import io

import pytest
import requests
import torch
from PIL import Image
from server_fixtures import data_url, png_bytes

from mmcore import Engine
from mmcore.server import BackgroundServer, ServerConfig
from mmcore.testing.tiny_hf_vlms import build_tiny_idefics3

MODEL = "tiny-idefics3"
MAX_TOKENS = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model_dir = build_tiny_idefics3(tmp_path_factory.mktemp("idefics3_server"))
    config = ServerConfig(model_names=[MODEL], log_level="warning", shutdown_timeout_s=10.0)
    with BackgroundServer(lambda: Engine(model_dir, seed=0), config) as srv:
        yield srv, model_dir


def _chat(server, content, **extra) -> requests.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
    }
    return requests.post(server.url + "/v1/chat/completions", json={**body, **extra}, timeout=120)


def test_chat_with_image_matches_hf(served):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    server, model_dir = served
    png = png_bytes(3, size=(56, 40))
    content = [
        {"type": "image_url", "image_url": {"url": data_url(png)}},
        {"type": "text", "text": "Describe the picture."},
    ]
    response = _chat(server, content)
    assert response.status_code == 200, response.text
    processor = AutoProcessor.from_pretrained(model_dir)
    hf = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, content[1]]}], add_generation_prompt=True
    )
    image = Image.open(io.BytesIO(png)).convert("RGB")
    inputs = processor(text=text, images=[image], return_tensors="pt")
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
    assert response.json()["choices"][0]["message"]["content"] == expected
    assert response.json()["usage"]["prompt_tokens"] == inputs["input_ids"].shape[1]


def test_unknown_processor_setting_is_a_400_and_the_server_serves_on(served):
    server, _ = served
    content = [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(4))}},
        {"type": "text", "text": "hi"},
    ]
    bad = _chat(server, content, mm_processor_kwargs={"not_a_setting": True})
    assert bad.status_code == 400
    assert "not_a_setting" in bad.json()["error"]["message"]
    assert _chat(server, content).status_code == 200
