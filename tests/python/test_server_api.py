# ruff: noqa: F811  (fixtures imported from server_fixtures are parameters here)
"""The server through the official openai client: answers equal Engine's on the same input."""

from __future__ import annotations

import re

import pytest
import requests
from server_fixtures import (  # noqa: F401  (pytest fixtures)
    MODEL_NAME,
    client,
    data_url,
    image_part,
    media_dir,
    oracle,
    png_bytes,
    server_both_modes,
    user,
)

from mmcore import SamplingParams

MAX_TOKENS = 8
GREEDY = {"temperature": 0.0, "max_tokens": MAX_TOKENS, "extra_body": {"ignore_eos": True}}
ORACLE_GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def server(server_both_modes):
    """This module's tests run against the engine thread and the engine core process."""
    return server_both_modes


ONE_IMAGE = user(image_part(data_url(png_bytes(1))), "What is in this picture?")
TWO_IMAGES = user(
    "Compare",
    image_part(data_url(png_bytes(2))),
    "with",
    image_part(data_url(png_bytes(3, size=(64, 32)))),
)


def _oracle_chat(oracle, messages, params=ORACLE_GREEDY):
    return oracle.chat(messages, params, use_tqdm=False)[0]


@pytest.mark.parametrize("messages", [ONE_IMAGE, TWO_IMAGES], ids=["one_image", "two_images"])
def test_chat_with_images_equals_engine_chat(client, oracle, messages):
    expected = _oracle_chat(oracle, messages)
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, **GREEDY)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.outputs[0].text
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert reply.usage.completion_tokens == MAX_TOKENS


def test_stream_concatenates_to_the_non_stream_answer(client):
    full = client.chat.completions.create(model=MODEL_NAME, messages=TWO_IMAGES, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=TWO_IMAGES,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == MAX_TOKENS
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_with_a_stop_string_matches_the_non_stream_cut(client, oracle):
    # Take a stop string from the middle of the greedy answer so the cut happens mid-stream.
    answer = _oracle_chat(
        oracle, ONE_IMAGE, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    )
    text = answer.outputs[0].text
    # The first clean 2-character window from the middle on whose first occurrence is late.
    candidates = [text[i : i + 2] for i in range(len(text) // 2, len(text) - 1)]
    usable = [c for c in candidates if "\ufffd" not in c and text.index(c) >= 2]
    assert usable, f"no usable stop string in {text!r}"
    stop = usable[0]
    kwargs = {
        "temperature": 0.0,
        "max_tokens": 16,
        "stop": [stop],
        "extra_body": {"ignore_eos": True},
    }
    full = client.chat.completions.create(model=MODEL_NAME, messages=ONE_IMAGE, **kwargs)
    assert full.choices[0].message.content == text[: text.index(stop)]
    assert full.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=MODEL_NAME, messages=ONE_IMAGE, stream=True, **kwargs
    )
    parts = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(parts) == full.choices[0].message.content


def test_completions_text_token_ids_and_stream(client, oracle):
    prompt = "USER: tell me a story about a dog\nASSISTANT:"
    expected = oracle.generate(prompt, ORACLE_GREEDY, use_tqdm=False)[0]
    reply = client.completions.create(model=MODEL_NAME, prompt=prompt, **GREEDY)
    assert reply.choices[0].text == expected.outputs[0].text
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids)
    by_ids = client.completions.create(model=MODEL_NAME, prompt=expected.prompt_token_ids, **GREEDY)
    assert by_ids.choices[0].text == expected.outputs[0].text
    streamed = client.completions.create(model=MODEL_NAME, prompt=prompt, stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected.outputs[0].text
    batch = client.completions.create(
        model=MODEL_NAME, prompt=[prompt, "USER: hi\nASSISTANT:"], **GREEDY
    )
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == expected.outputs[0].text


def test_n_seed_and_logprobs(client):
    kwargs = {"model": MODEL_NAME, "messages": ONE_IMAGE, "max_tokens": 6, "temperature": 1.0}
    first = client.chat.completions.create(n=3, seed=1234, **kwargs)
    again = client.chat.completions.create(n=3, seed=1234, **kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=ONE_IMAGE, logprobs=True, top_logprobs=3, **GREEDY
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == MAX_TOKENS
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0.0
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
    assert "".join(e.token for e in content).strip() != ""


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} is missing from /metrics"
    return float(match.group(1))


def test_metrics_counters_increase(client, server):
    names = [
        "mmcore_prompt_tokens_total",
        "mmcore_generation_tokens_total",
        "mmcore_time_to_first_token_seconds_count",
        "mmcore_inter_token_latency_seconds_count",
        "mmcore_e2e_request_latency_seconds_count",
    ]
    client.chat.completions.create(model=MODEL_NAME, messages=ONE_IMAGE, **GREEDY)
    before = requests.get(server.url + "/metrics", timeout=10).text
    client.chat.completions.create(model=MODEL_NAME, messages=ONE_IMAGE, **GREEDY)
    after = requests.get(server.url + "/metrics", timeout=10).text
    for name in names:
        assert _metric(after, name) > _metric(before, name), name
    assert (
        _metric(after, "mmcore_generation_tokens_total")
        - _metric(before, "mmcore_generation_tokens_total")
        == MAX_TOKENS
    )
    ok = '{endpoint="/v1/chat/completions",status="200"}'
    assert _metric(after, "mmcore_http_requests_total", ok) > _metric(
        before, "mmcore_http_requests_total", ok
    )
    for gauge in (
        "mmcore_kv_cache_blocks_used",
        "mmcore_kv_cache_usage_ratio",
        "mmcore_prefix_cache_hit_rate",
        "mmcore_encoder_cache_hit_rate",
        "mmcore_num_requests_running",
        "mmcore_num_requests_waiting",
    ):
        _metric(after, gauge)
    # The same image twice: the prefix cache has hit by now.
    assert _metric(after, "mmcore_prefix_cache_hit_rate") > 0.0


def test_completion_logprobs_and_streamed_n(client):
    prompt = "USER: count with me\nASSISTANT:"
    reply = client.completions.create(model=MODEL_NAME, prompt=prompt, logprobs=2, **GREEDY)
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == MAX_TOKENS
    assert "".join(lp.tokens).endswith(reply.choices[0].text[-1:])
    assert lp.text_offset == sorted(lp.text_offset)
    assert all(len(top) <= 2 and max(top.values()) <= 0.0 for top in lp.top_logprobs)
    streamed = client.chat.completions.create(
        model=MODEL_NAME,
        messages=ONE_IMAGE,
        n=2,
        seed=7,
        temperature=1.0,
        max_tokens=5,
        stream=True,
    )
    texts, finished = {0: "", 1: ""}, {}
    for chunk in streamed:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert set(finished) == {0, 1}
    full = client.chat.completions.create(
        model=MODEL_NAME, messages=ONE_IMAGE, n=2, seed=7, temperature=1.0, max_tokens=5
    )
    assert [texts[0], texts[1]] == [c.message.content for c in full.choices]
