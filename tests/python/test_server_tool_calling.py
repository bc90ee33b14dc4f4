# ruff: noqa: F811  (fixtures imported from openai_server_fixtures are parameters here)
"""Tool calling and structured outputs through the official ``openai`` client, as a vLLM user
calls them: required and named tool_choice give valid calls, auto parses the Hermes format,
streamed tool-call deltas assemble to the same calls, response_format output validates."""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai_server_fixtures import (  # noqa: F401  (pytest fixtures)
    MODEL,
    QUESTION,
    TOOLS,
    client,
    srv,
)
from openai_server_fixtures import post as _post

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


@pytest.fixture(scope="module")
def no_blanks(tiny_llava_dir) -> dict[str, float]:
    """A logit_bias against whitespace-only tokens. JSON grammars allow any whitespace between
    tokens, and a random tiny model would otherwise fill max_tokens with it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llava_dir)
    blank = [i for i in range(len(tok)) if not tok.decode([i]).strip()]
    return {str(i): -100.0 for i in blank}


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
