"""Request fields of the OpenAI server: each one is applied (mapped onto SamplingParams or the
structured output constraint) or refused with an error naming it; none is silently ignored."""

from __future__ import annotations

import jsonschema
import pytest
from pydantic import ValidationError

from mmcore.server.protocol import ChatCompletionRequest, CompletionRequest
from mmcore.server.structured import required_tool_call_schema
from mmcore.server.unsupported_fields import UNSUPPORTED_CHAT, UNSUPPORTED_COMPLETION

USER = [{"role": "user", "content": "hi"}]
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time"}},
]


def _chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(**{"messages": USER, **fields})


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_CHAT))
def test_unsupported_chat_fields_are_refused_by_name(name):
    with pytest.raises(ValidationError, match=f"unsupported field '{name}'"):
        _chat(**{name: {"x": 1} if name != "functions" else [{"name": "f"}]})
    _chat(**{name: None})  # an empty value is the same as leaving it out


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_COMPLETION))
def test_unsupported_completion_fields_are_refused_by_name(name):
    with pytest.raises(ValidationError, match=f"unsupported field '{name}'"):
        CompletionRequest(prompt="a", **{name: "x"})


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"guided_jsn": {}}, "unknown field 'guided_jsn'"),
        ({"temprature": 0.5}, "unknown field 'temprature'"),
        ({"stream": True, "stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"),
        ({"response_format": {"type": "json_object", "schema": {}}}, "response_format.schema"),
        ({"tools": [{"type": "function", "function": {"name": "f", "x": 1}}]}, "function.x"),
        ({"messages": [{"role": "user", "content": "x", "mood": "happy"}]}, "mood"),
        ({"best_of": 3}, "best_of=3 with n=1 is not supported"),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "'nope', which is not among the tools",
        ),
        ({"continue_final_message": True}, "cannot both be true"),
        (
            {"continue_final_message": True, "add_generation_prompt": False},
            "needs an assistant message last",
        ),
        ({"logit_bias": {"abc": 1.0}}, "logit_bias keys must be token ids"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_bad_fields_are_named(fields, fragment):
    with pytest.raises(ValidationError, match=fragment):
        _chat(**fields)


def test_sampling_fields_reach_sampling_params():
    p = _chat(
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        repetition_penalty=1.3,
        logit_bias={"7": -100, "9": 2.5},
        min_p=0.1,
        top_k=5,
        seed=11,
        n=2,
        best_of=2,
        allowed_token_ids=[3, 4, 7],
        bad_words=["bad"],
        include_stop_str_in_output=True,
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
        prompt_logprobs=2,
        truncate_prompt_tokens=64,
        min_tokens=1,
        user="alice",
    ).to_sampling_params()
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -0.25, 1.3)
    assert p.logit_bias == {7: -100, 9: 2.5}
    assert (p.min_p, p.top_k, p.seed, p.n) == (0.1, 5, 11, 2)
    assert p.allowed_token_ids == [3, 4, 7] and p.bad_words == ["bad"]
    assert p.include_stop_str_in_output and not p.skip_special_tokens
    assert not p.spaces_between_special_tokens
    assert (p.prompt_logprobs, p.truncate_prompt_tokens, p.min_tokens) == (2, 64, 1)
    assert p.structured_outputs is None


@pytest.mark.parametrize(
    "fields, kind, value",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "w", "schema": WEATHER_PARAMS, "strict": True},
                }
            },
            "json",
            WEATHER_PARAMS,
        ),
        ({"response_format": {"type": "json_object"}}, "json_object", True),
        ({"guided_json": WEATHER_PARAMS}, "json", WEATHER_PARAMS),
        ({"guided_regex": "[a-z]+"}, "regex", "[a-z]+"),
        ({"guided_choice": ["yes", "no"]}, "choice", ["yes", "no"]),
        ({"guided_grammar": 'root ::= "a"'}, "grammar", 'root ::= "a"'),
        ({"structured_outputs": {"regex": "[0-9]+"}}, "regex", "[0-9]+"),
        ({"structured_outputs": {"choice": ["x", "y"]}}, "choice", ["x", "y"]),
        (
            {
                "tools": TOOLS,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            },
            "json",
            WEATHER_PARAMS,
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            "json",
            {"type": "object"},
        ),
    ],
)
def test_structured_output_fields_become_one_constraint(fields, kind, value):
    constraint = _chat(**fields).to_sampling_params().structured_outputs
    assert getattr(constraint, kind) == value
    if kind == "json":
        assert constraint.regex is None and constraint.choice is None


def test_free_text_response_format_and_tool_choice_none_add_no_constraint():
    assert _chat(response_format={"type": "text"}).to_sampling_params().structured_outputs is None
    req = _chat(tools=TOOLS, tool_choice="none")
    assert req.to_sampling_params().structured_outputs is None
    assert req.tool_dicts()[0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "only one structured"),
        ({"tools": TOOLS, "tool_choice": "required", "guided_json": {}}, "only one structured"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "exactly one of"),
        ({"structured_outputs": {}}, "exactly one of"),
        ({"guided_json": "{not json"}, "guided_json is not valid JSON"),
        ({"response_format": {"type": "json_schema"}}, "needs json_schema.schema"),
    ],
)
def test_conflicting_or_malformed_constraints_are_refused(fields, fragment):
    with pytest.raises(ValueError, match=fragment):
        _chat(**fields).to_sampling_params()


def test_required_tool_choice_schema_accepts_only_well_formed_calls():
    req = _chat(tools=TOOLS, tool_choice="required")
    schema = req.to_sampling_params().structured_outputs.json
    assert schema == required_tool_call_schema(req.tools, parallel=True)
    good = [
        {"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}},
        {"name": "get_time", "parameters": {}},
    ]
    jsonschema.validate(good, schema)
    for bad in (
        [],
        [{"name": "get_weather", "parameters": {"city": "Paris"}}],
        [{"name": "other", "parameters": {}}],
        [{"name": "get_time"}],
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    single = _chat(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(good, single.to_sampling_params().structured_outputs.json)


def test_completion_fields():
    req = CompletionRequest(prompt="a", echo=True, guided_choice=["x"], repetition_penalty=1.1)
    p = req.to_sampling_params()
    assert p.structured_outputs.choice == ["x"] and p.repetition_penalty == 1.1
    assert req.echo
    with pytest.raises(ValidationError, match="unknown field 'messages'"):
        CompletionRequest(prompt="a", messages=USER)
    with pytest.raises(ValidationError, match="unknown field 'tools'"):
        CompletionRequest(prompt="a", tools=TOOLS)


def test_an_earlier_reply_sent_back_as_the_sdk_dumps_it_is_accepted():
    earlier = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "audio": None,
        "function_call": None,
        "annotations": [],
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    req = _chat(messages=[*USER, earlier, {"role": "tool", "tool_call_id": "c1", "content": "ok"}])
    assert req.message_dicts()[1] == {
        "role": "assistant",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    with pytest.raises(ValidationError, match="unsupported field 'refusal'"):
        _chat(messages=[*USER, {**earlier, "refusal": "I cannot"}])
    with pytest.raises(ValidationError, match="unknown field 'mood'"):
        _chat(messages=[{"role": "user", "content": "x", "mood": "happy"}])
