# ruff: noqa: F811  (fixtures imported from openai_server_fixtures are parameters here)
"""vLLM's request fields through the OpenAI server: each applied or refused with a 400 naming it;
the /version, /ping, /tokenize and /detokenize endpoints; vLLM's metric names; prompt log-probs;
remote image URLs to the server's own network refused."""

from __future__ import annotations

import openai
import pytest
import requests
from openai_server_fixtures import (  # noqa: F401  (pytest fixtures)
    IMAGE_TOKENS,
    MODEL,
    QUESTION,
    client,
    srv,
)
from openai_server_fixtures import post as _post
from server_fixtures import image_part, user


# ----------------------------------------------------------------------------- request fields
@pytest.mark.parametrize(
    "field, value",
    [
        ("guided_decoding_backend", "outlines"),
        ("functions", [{"name": "f"}]),
        ("use_beam_search", True),
        ("no_such_field", 1),
    ],
)
def test_unsupported_fields_are_refused_with_400_naming_them(client, field, value):
    with pytest.raises(openai.BadRequestError, match=f"'{field}'") as refused:
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=2, extra_body={field: value}
        )
    assert refused.value.param == field
    with pytest.raises(openai.BadRequestError, match=f"'{field}'"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={field: value})


def test_logit_bias_and_penalties_are_applied(client, srv):
    token = _post(srv, "/tokenize", {"prompt": "dog"}).json()["tokens"][0]
    token_text = _post(srv, "/detokenize", {"tokens": [token]}).json()["prompt"]
    reply = client.completions.create(
        model=MODEL,
        prompt="Hello",
        max_tokens=6,
        temperature=0.0,
        logit_bias={str(token): 100},
        logprobs=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].logprobs.tokens == [token_text] * 6
    plain = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=12, temperature=0.0, extra_body={"ignore_eos": True}
    )
    penalized = client.completions.create(
        model=MODEL,
        prompt="Hello",
        max_tokens=12,
        temperature=0.0,
        extra_body={"repetition_penalty": 2.0, "ignore_eos": True},
    )
    assert penalized.choices[0].text != plain.choices[0].text
    with pytest.raises(openai.BadRequestError, match="logit_bias has token ids outside"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, logit_bias={"999999": 1})


def test_echo_continue_final_message_and_template_kwargs(client, srv):
    completion = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=3, echo=True)
    assert completion.choices[0].text.startswith("Once upon")
    streamed = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=3, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed).startswith("Once upon")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The cat"}]
    reply = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=3,
        extra_body={"continue_final_message": True, "add_generation_prompt": False, "echo": True},
    )
    assert reply.choices[0].message.content.startswith("The cat")
    template = "{{ prefix }}{% for m in messages %}{{ m.content }}{% endfor %}"
    tokens = _post(
        srv,
        "/tokenize",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "chat_template": template,
            "chat_template_kwargs": {"prefix": "SYS>"},
        },
    ).json()["tokens"]
    assert _post(srv, "/detokenize", {"tokens": tokens}).json()["prompt"] == "SYS>hi"
    bad = _post(
        srv,
        "/v1/chat/completions",
        {"messages": messages, "chat_template_kwargs": {"tokenize": True}},
    )
    assert bad.status_code == 400 and "chat_template_kwargs may not set" in bad.text


def test_continuous_usage_stats(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
            extra_body={"ignore_eos": True},
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert all(c.usage is not None for c in with_choices)
    counts = [c.usage.completion_tokens for c in with_choices]
    assert counts == sorted(counts) and counts[-1] == 5
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


# ----------------------------------------------------------------------------- endpoints
def test_version_ping_tokenize_detokenize(srv, client):
    assert requests.get(srv.url + "/version", timeout=10).json()["version"]
    assert requests.get(srv.url + "/ping", timeout=10).status_code == 200
    assert requests.post(srv.url + "/ping", timeout=10).status_code == 200
    text = _post(srv, "/tokenize", {"prompt": "hello world", "return_token_strs": True}).json()
    assert text["count"] == len(text["tokens"]) == len(text["token_strs"])
    assert text["max_model_len"] > 0
    assert _post(srv, "/detokenize", {"tokens": text["tokens"]}).json()["prompt"] == "hello world"
    # Messages with an image: the count is what the model sees, the image expanded.
    chat = _post(srv, "/tokenize", {"messages": QUESTION, "return_token_strs": True}).json()
    assert chat["token_strs"].count("<image>") == IMAGE_TOKENS
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)
    assert chat["count"] == reply.usage.prompt_tokens
    for path, body, fragment in [
        ("/detokenize", {"tokens": [10**6]}, "outside the vocabulary"),
        ("/tokenize", {"prompt": "x", "extra": 1}, "extra"),
        ("/tokenize", {"messages": QUESTION, "prompt": "x"}, "prompt"),
        ("/tokenize", {"prompt": "x", "model": "other"}, "does not exist"),
    ]:
        response = _post(srv, path, body)
        assert response.status_code in (400, 404) and fragment in response.text, response.text


def test_metrics_under_vllm_names(srv, client):
    client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3)
    text = requests.get(srv.url + "/metrics", timeout=10).text
    label = f'{{model_name="{MODEL}"}}'
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:time_per_output_token_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
    ):
        assert name + label in text, name
    prompt_tokens = float(text.split(f"vllm:prompt_tokens_total{label} ")[1].split()[0])
    assert prompt_tokens >= IMAGE_TOKENS
    assert 'vllm:request_success_total{finished_reason="length",model_name="tiny-tools"}' in text


# ----------------------------------------------------------------------------- remote images
@pytest.mark.parametrize(
    "url, what",
    [
        ("http://127.0.0.1:9/cat.png", "loopback"),
        ("http://localhost:9/cat.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.7/cat.png", "private"),
    ],
)
def test_image_urls_to_the_servers_network_are_refused(srv, url, what):
    response = _post(
        srv, "/v1/chat/completions", {"messages": user(image_part(url), "hi"), "max_tokens": 2}
    )
    assert response.status_code == 400, response.text
    assert what in response.json()["error"]["message"]


def test_prompt_logprobs_are_returned(srv):
    prompt_ids = _post(srv, "/tokenize", {"prompt": "Once upon a time"}).json()["tokens"]
    reply = _post(
        srv,
        "/v1/completions",
        {"prompt": "Once upon a time", "max_tokens": 2, "prompt_logprobs": 1},
    ).json()
    plp = reply["choices"][0]["prompt_logprobs"]
    assert len(plp) == len(prompt_ids) and plp[0] is None
    for token_id, position in zip(prompt_ids[1:], plp[1:]):
        entry = position[str(token_id)]  # the actual prompt token is always reported
        assert entry["logprob"] <= 0.0 and entry["rank"] >= 1
    chat = _post(
        srv, "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 1, "prompt_logprobs": 0}
    ).json()
    assert len(chat["prompt_logprobs"]) == chat["usage"]["prompt_tokens"]
