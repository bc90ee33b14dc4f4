"""Gemma 3 behind the OpenAI server, and tensor parallel (TP=2 on CPU, gloo) against TP=1.

The server answers a chat request with an image (and a pan-and-scan one through the
``mm_processor_kwargs`` field) exactly as ``Engine.chat`` does; HF parity of ``Engine.chat``
itself is in test_gemma3_parity.py. TP=2 shards the SigLIP tower and the LM by heads.
"""

from __future__ import annotations

import pytest
import requests
from server_fixtures import data_url, image_part, png_bytes, user

from mmcore import Engine, SamplingParams
from mmcore.server import BackgroundServer, ServerConfig

MODEL = "tiny-gemma3"
MAX_TOKENS = 5
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
SMALL_KV = 64 << 20


@pytest.fixture(scope="module")
def served(tiny_gemma3_dir):
    config = ServerConfig(model_names=[MODEL], log_level="warning", shutdown_timeout_s=10.0)

    def engine():
        return Engine(tiny_gemma3_dir, seed=0, kv_cache_memory_bytes=SMALL_KV)

    with BackgroundServer(engine, config) as srv:
        yield srv, engine()


def _chat(server, messages, **extra) -> requests.Response:
    body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0.0}
    return requests.post(server.url + "/v1/chat/completions", json={**body, **extra}, timeout=120)


def test_chat_request_with_image_answers_as_engine_chat(served):
    server, oracle = served
    wide = data_url(png_bytes(5, (64, 24)))
    messages = user(image_part(data_url(png_bytes(3))), "and", image_part(wide), "what is it?")
    reply = _chat(server, messages)
    assert reply.status_code == 200, reply.text
    expected = oracle.chat(messages, GREEDY, use_tqdm=False)[0]
    body = reply.json()
    assert body["choices"][0]["message"]["content"] == expected.outputs[0].text
    assert body["usage"]["prompt_tokens"] == len(expected.prompt_token_ids)
    # Pan-and-scan per request: 3 crops of the wide image add 3 x (16 + 6) tokens and text.
    crops = _chat(
        server, user(image_part(wide), "hi"), mm_processor_kwargs={"do_pan_and_scan": True}
    )
    plain = _chat(server, user(image_part(wide), "hi"))
    assert crops.status_code == 200 and plain.status_code == 200, crops.text
    assert crops.json()["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"] + 60
    bad = _chat(server, messages, mm_processor_kwargs={"pan_and_scan_max_num_crops": 9})
    assert bad.status_code == 400 and "pan_and_scan_max_num_crops" in bad.text


def test_tensor_parallel_2_equals_1(tiny_gemma3_dir, photos):
    prompts = [
        "<bos><start_of_turn>user\nhello there<end_of_turn>\n<start_of_turn>model\n",
        {
            "prompt": "<bos><start_of_turn>user\n<start_of_image> and <start_of_image> "
            "compare<end_of_turn>\n<start_of_turn>model\n",
            "multi_modal_data": {"image": [photos["chelsea"], photos["coffee_wide"]]},
        },
        {
            "prompt": "<bos><start_of_turn>user\n"
            + "The cat sleeps on a warm blanket. " * 4
            + "<start_of_image><end_of_turn>\n<start_of_turn>model\n",
            "multi_modal_data": {"image": [photos["astronaut"]]},
        },
    ]
    options = dict(
        max_num_batched_tokens=32, enable_prefix_caching=True, kv_cache_memory_bytes=SMALL_KV
    )
    single = Engine(tiny_gemma3_dir, **options)
    expected = [o.outputs[0].token_ids for o in single.generate(prompts, GREEDY, use_tqdm=False)]
    sharded = Engine(tiny_gemma3_dir, tensor_parallel_size=2, **options)
    try:
        got = [o.outputs[0].token_ids for o in sharded.generate(prompts, GREEDY, use_tqdm=False)]
    finally:
        sharded.shutdown()
    assert got == expected
