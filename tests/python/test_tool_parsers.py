"""Tool-call parsing of model output (Hermes/Qwen and Llama-3 JSON formats, forced calls), whole
and streamed in arbitrary chunks: the streamed deltas must add up to the whole answer."""

from __future__ import annotations

import json

import pytest

from mmcore.server.tool_parsers import get_tool_parser
from mmcore.server.tool_parsers.forced import RequiredToolCallsParser
from mmcore.server.tool_parsers.stream import ToolCallOutput

HERMES_TWO_CALLS = (
    "Let me check both.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'
)
LLAMA_TWO_CALLS = (
    '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}; '
    '{"name": "get_time", "parameters": {"tz": "CET"}}'
)
EXPECTED_CALLS = [
    ("get_weather", {"city": "Paris", "unit": "c"}),
    ("get_time", {"tz": "CET"}),
]


def _calls(message_or_calls) -> list[tuple[str, dict]]:
    calls = message_or_calls.get("tool_calls") or []
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def _stream(output: ToolCallOutput, text: str, chunk: int) -> dict:
    """Feed ``text`` in ``chunk``-sized pieces; assemble the deltas as an OpenAI client does."""
    content, calls = "", {}
    pieces = [text[i : i + chunk] for i in range(0, len(text), chunk)] or [""]
    for i, piece in enumerate(pieces):
        delta = output.delta(piece, final=i == len(pieces) - 1)
        content += delta.get("content", "")
        for tc in delta.get("tool_calls", []):
            entry = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": ""})
            if "id" in tc:
                assert entry["id"] is None, "a call's id is sent once"
                entry["id"] = tc["id"]
                assert tc["type"] == "function"
            entry["name"] += tc["function"].get("name", "")
            entry["arguments"] += tc["function"].get("arguments", "")
    assert sorted(calls) == list(range(len(calls))), "tool call indexes count from 0"
    return {
        "content": content,
        "tool_calls": [
            {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(calls.items())
        ],
    }


@pytest.mark.parametrize(
    "parser_name, text, content",
    [
        ("hermes", HERMES_TWO_CALLS, "Let me check both.\n"),
        ("qwen", HERMES_TWO_CALLS, "Let me check both.\n"),
        ("llama3_json", LLAMA_TWO_CALLS, None),
        ("llama3_json", "<|python_tag|>" + LLAMA_TWO_CALLS, None),
        ("llama3_json", "  \n" + LLAMA_TWO_CALLS, None),
    ],
)
def test_calls_are_parsed_whole_and_streamed(parser_name, text, content):
    message = ToolCallOutput(parser=get_tool_parser(parser_name)).message(text)
    assert message["content"] == content
    assert _calls(message) == EXPECTED_CALLS
    assert all(c["id"].startswith("chatcmpl-tool-") for c in message["tool_calls"])
    for chunk in (1, 2, 5, 13, len(text)):
        streamed = _stream(ToolCallOutput(parser=get_tool_parser(parser_name)), text, chunk)
        assert streamed["content"] == (content or "")
        assert _calls(streamed) == EXPECTED_CALLS
        assert "<tool" not in streamed["content"]


@pytest.mark.parametrize("parser_name", ["hermes", "llama3_json"])
@pytest.mark.parametrize(
    "text", ["The weather is sunny.", "  plain answer with a { brace", "<tool", "a < b"]
)
def test_plain_text_stays_content(parser_name, text):
    message = ToolCallOutput(parser=get_tool_parser(parser_name)).message(text)
    assert message == {"role": "assistant", "content": text}
    for chunk in (1, 3):
        streamed = _stream(ToolCallOutput(parser=get_tool_parser(parser_name)), text, chunk)
        assert streamed == {"content": text, "tool_calls": []}


def test_hermes_holds_back_a_possible_tag_and_reads_an_unclosed_last_call():
    out = ToolCallOutput(parser=get_tool_parser("hermes"))
    assert out.delta("Sure <tool_", final=False) == {"content": "Sure "}
    assert out.delta('call>{"name": "f", "arguments": {}}', final=False) == {}
    final = out.delta("", final=True)  # the model stopped before </tool_call>
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in final["tool_calls"]] == [
        ("f", "{}")
    ]
    assert out.called


@pytest.mark.parametrize("parser_name", ["hermes", "llama3_json"])
def test_unparsable_calls_come_back_as_content(parser_name):
    text = (
        '<tool_call>{"name": "f", "arguments": {oops}</tool_call>'
        if parser_name == "hermes"
        else '{"name": "f", "parameters": {oops}'
    )
    message = ToolCallOutput(parser=get_tool_parser(parser_name)).message(text)
    assert message == {"role": "assistant", "content": text}
    streamed = _stream(ToolCallOutput(parser=get_tool_parser(parser_name)), text, 4)
    assert streamed == {"content": text, "tool_calls": []}


def test_forced_required_calls_stream_one_by_one():
    text = (
        '[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}, '
        '{"name": "get_time", "parameters": {"tz": "CET"}}]'
    )
    message = ToolCallOutput(parser=RequiredToolCallsParser()).message(text)
    assert message["content"] is None and _calls(message) == EXPECTED_CALLS
    out = ToolCallOutput(parser=RequiredToolCallsParser())
    first_end = text.index("}}") + 2
    assert [c["function"]["name"] for c in out.delta(text[:first_end], False)["tool_calls"]] == [
        "get_weather"
    ]
    rest = out.delta(text[first_end:], True)
    assert [(c["index"], c["function"]["name"]) for c in rest["tool_calls"]] == [(1, "get_time")]


def test_named_function_streams_its_arguments_as_generated():
    args = '{"city": "Paris", "unit": "c"}'
    message = ToolCallOutput(named_function="get_weather").message(args)
    assert message["content"] is None
    assert _calls(message) == [("get_weather", {"city": "Paris", "unit": "c"})]
    out = ToolCallOutput(named_function="get_weather")
    first = out.delta(args[:5], False)
    assert first["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": args[:5]}
    second = out.delta(args[5:], True)
    assert second == {"tool_calls": [{"index": 0, "function": {"arguments": args[5:]}}]}
    assert _calls(_stream(ToolCallOutput(named_function="g"), args, 3)) == [
        ("g", {"city": "Paris", "unit": "c"})
    ]


def test_unknown_parser_is_named():
    with pytest.raises(ValueError, match="unknown tool call parser 'mistral'.*hermes"):
        get_tool_parser("mistral")


def test_auto_tool_choice_needs_a_configured_parser():
    from types import SimpleNamespace

    from mmcore.server.errors import APIError
    from mmcore.server.protocol import ChatCompletionRequest
    from mmcore.server.serving_chat import _tool_output_factory

    tools = [{"type": "function", "function": {"name": "f"}}]
    body = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], tools=tools)
    with pytest.raises(APIError, match="--enable-auto-tool-choice and --tool-call-parser"):
        _tool_output_factory(SimpleNamespace(tool_call_parser=None), body)
    output = _tool_output_factory(SimpleNamespace(tool_call_parser="llama3_json"), body)()
    assert output.message('{"name": "f", "parameters": {}}')["tool_calls"]


def test_cli_choices_are_the_registered_parsers():
    import dataclasses

    from mmcore.server.tool_parsers import TOOL_PARSERS
    from mmcore.server_args import ServerArgs

    field = next(f for f in dataclasses.fields(ServerArgs) if f.name == "tool_call_parser")
    assert set(field.metadata["choices"]) == set(TOOL_PARSERS)
    with pytest.raises(ValueError, match="needs --tool-call-parser"):
        ServerArgs(enable_auto_tool_choice=True)
