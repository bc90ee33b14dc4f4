"""The OpenAI server as a vLLM user drives it: tool calling and structured outputs through the
official ``openai`` client, vLLM's request fields applied, unknown fields refused, the
/version, /ping, /tokenize and /detokenize endpoints, vLLM's metric names, and remote image URLs
to the server's own network refused."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import requests
from server_fixtures import data_url, image_part, png_bytes, user

from mmcore import Engine
from mmcore.server import BackgroundServer, ServerConfig

MODEL = "tiny-tools"
IMAGE_TOKENS = 16  # tiny LLaVA: (32 / 8) ** 2 patches per image
UNIT_PARAMS = {
    "type": "object",
    "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["unit"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": UNIT_PARAMS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"utc": {"type": "boolean"}},
                "required": ["utc"],
                "additionalProperties": False,
            },
        },
    },
]
PARAMS_BY_NAME = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "animal": {"type": "string", "enum": ["cat", "dog", "bird"]},
        "indoor": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["animal", "indoor", "tags"],
    "additionalProperties": False,
}
QUESTION = user(image_part(data_url(png_bytes(5))), "What is the weather?")


@pytest.fixture(scope="module")
def srv(tiny_llava_dir):
    """A server with auto tool choice (Hermes parser) and the default media policy."""
    config = ServerConfig(
        model_names=[MODEL],
        log_level="warning",
        tool_call_parser="hermes",
        enable_auto_tool_choice=True,
    )
    with BackgroundServer(lambda: Engine(tiny_llava_dir, seed=0), config) as server:
        yield server


@pytest.fixture(scope="module")
def no_blanks(tiny_llava_dir) -> dict[str, float]:
    """A logit_bias against whitespace-only tokens. JSON grammars allow any whitespace between
    tokens, and a random tiny model would otherwise fill max_tokens with it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llava_dir)
    blank = [i for i in range(len(tok)) if not tok.decode([i]).strip()]
    return {str(i): -100.0 for i in blank}


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", timeout=60, max_retries=0)


def _post(srv, path: str, body: dict) -> requests.Response:
    return requests.post(srv.url + path, json=body, timeout=60)


def _check_calls(tool_calls, names=None) -> None:
    assert tool_calls, "no tool calls"
    for call in tool_calls:
        assert call.type == "function" and call.id
        assert names is None or call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), PARAMS_BY_NAME[call.function.name])


# ----------------------------------------------------------------------------- tool calling
@pytest.mark.parametrize("seed", [0, 1])
def test_required_tool_choice_returns_valid_calls(client, no_blanks, seed):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,  # a random model would rarely close the list by itself
        max_tokens=80,
        seed=seed,
        logit_bias=no_blanks,
    )
    choice = reply.choices[0]
    _check_calls(choice.message.tool_calls)
    assert choice.message.content is None
    assert choice.finish_reason == "tool_calls"


def test_named_tool_choice_returns_that_function_with_valid_arguments(client, no_blanks):
    for seed in (0, 1):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            max_tokens=40,
            seed=seed,
            logit_bias=no_blanks,
        )
        _check_calls(reply.choices[0].message.tool_calls, names={"get_time"})
        assert len(reply.choices[0].message.tool_calls) == 1
        assert reply.choices[0].finish_reason == "stop"


def _assemble(stream) -> tuple[str, dict, list]:
    content, calls, finish = "", {}, []
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
                entry["name"] += (tc.function.name or "") if tc.function else ""
                entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    return content, calls, finish


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_streamed_tool_call_deltas_assemble_to_valid_calls(client, no_blanks, tool_choice):
    kwargs = dict(
        model=MODEL,
        messages=QUESTION,
        tools=TOOLS,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        seed=3,
        logit_bias=no_blanks,
    )
    whole = client.chat.completions.create(max_tokens=80, **kwargs)
    content, calls, finish = _assemble(
        client.chat.completions.create(max_tokens=80, stream=True, **kwargs)
    )
    assert content == ""
    assert [(c["name"], c["arguments"]) for _, c in sorted(calls.items())] == [
        (c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls
    ]
    assert all(c["id"] for c in calls.values())
    assert finish == [whole.choices[0].finish_reason]


def test_auto_tool_choice_parses_the_hermes_format(client):
    # The tiny model never chooses to call a tool by itself: a regex makes it write a call in
    # the Hermes format, which the server's --tool-call-parser then reads.
    pattern = r'Ok\.<tool_call>\{"name":"get_time","arguments":\{"utc":(true|false)\}\}</tool_call>'
    kwargs = dict(
        model=MODEL,
        messages=QUESTION,
        tools=TOOLS,
        max_tokens=100,
        extra_body={"structured_outputs": {"regex": pattern}},
    )
    reply = client.chat.completions.create(**kwargs)
    message = reply.choices[0].message
    assert message.content == "Ok."
    _check_calls(message.tool_calls, names={"get_time"})
    assert reply.choices[0].finish_reason == "tool_calls"
    content, calls, finish = _assemble(client.chat.completions.create(stream=True, **kwargs))
    assert content == "Ok."
    assert [c["name"] for c in calls.values()] == ["get_time"]
    assert finish == ["tool_calls"]


def test_tool_choice_none_and_earlier_tool_turns_are_rendered(srv, client):
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none", max_tokens=4
    )
    assert reply.choices[0].message.tool_calls is None
    history = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
    ]
    template = (
        "{% for m in messages %}{{ m.role }}:"
        "{% if m.tool_calls %}{{ m.tool_calls[0].function.name }}"
        "({{ m.tool_calls[0].function.arguments.unit }}){% endif %}"
        "{% if m.tool_call_id %}[{{ m.tool_call_id }}]{% endif %}{{ m.content or '' }};"
        "{% endfor %}{% if tools %}tools={{ tools | map(attribute='function') "
        "| map(attribute='name') | join(',') }};{% endif %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tokens = _post(
        srv, "/tokenize", {"messages": history, "tools": TOOLS, "chat_template": template}
    ).json()["tokens"]
    text = _post(srv, "/detokenize", {"tokens": tokens}).json()["prompt"]
    assert text == (
        "user:weather?;assistant:get_weather(celsius);tool:[call_1]21 degrees;"
        "tools=get_weather,get_time;assistant:"
    )
    answer = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=4
    )
    assert answer.choices[0].finish_reason in ("stop", "length")


# ----------------------------------------------------------------------------- structured output
def test_response_format_json_schema_output_validates(client, no_blanks):
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True},
    }
    reply = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        response_format=response_format,
        n=2,
        seed=7,
        max_tokens=80,
        logit_bias=no_blanks,
    )
    for choice in reply.choices:
        jsonschema.validate(json.loads(choice.message.content), ANSWER_SCHEMA)
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        response_format=response_format,
        seed=8,
        max_tokens=80,
        logit_bias=no_blanks,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    jsonschema.validate(json.loads(text), ANSWER_SCHEMA)


def test_guided_choice_and_regex_on_completions(client):
    choice = client.completions.create(
        model=MODEL, prompt="Pick:", max_tokens=10, extra_body={"guided_choice": ["yes", "no"]}
    )
    assert choice.choices[0].text in ("yes", "no")
    regex = client.completions.create(
        model=MODEL, prompt="Code:", max_tokens=10, extra_body={"guided_regex": "[0-9]{3}-[a-c]"}
    )
    assert len(regex.choices[0].text) == 5 and regex.choices[0].text[3] == "-"


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


def test_invalid_constraints_are_400_and_the_server_keeps_serving(srv, client):
    for body, fragment in [
        ({"guided_regex": "([a-z"}, "invalid structured_outputs.regex"),
        ({"guided_grammar": "root ::= undefined_rule"}, "invalid structured_outputs.grammar"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 7}}}},
            "invalid structured_outputs.json",
        ),
    ]:
        response = _post(srv, "/v1/chat/completions", {"messages": QUESTION, **body})
        assert response.status_code == 400 and fragment in response.text, response.text
    assert client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2).choices
