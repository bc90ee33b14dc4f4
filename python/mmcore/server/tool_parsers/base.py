"""What every tool-call parser shares: the parsed call, the parser contract, a JSON scanner."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass
class ParsedToolCall:
    """One function call found in the model's output.

    Attributes:
        name: the function's name.
        arguments: the arguments as JSON text (OpenAI's ``function.arguments``).
        id: the call's id, as OpenAI's ``tool_calls[i].id``.
    """

    name: str
    arguments: str
    id: str = field(default_factory=new_tool_call_id)

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ScanResult:
    """What a parser can tell from the output so far.

    Attributes:
        content: the plain-text part known to be final (only ever grows while streaming).
        calls: the tool calls complete so far, in order.
        failed: the output claimed to hold tool calls but one could not be parsed.
    """

    content: str
    calls: list[ParsedToolCall]
    failed: bool = False


class ToolParser:
    """Finds tool calls in a model's text output (one format per subclass).

    ``scan`` is called on the whole text generated so far; ``final`` says generation ended, so
    a partial marker at the end is plain text and an unclosed call is read as it stands.
    """

    name: str = ""

    def scan(self, text: str, final: bool) -> ScanResult:
        raise NotImplementedError


def call_from_json(obj: Any, argument_keys: tuple[str, ...]) -> ParsedToolCall | None:
    """A call from ``{"name": ..., "<argument key>": {...}}``; None when it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    for key in argument_keys:
        if key in obj:
            args = obj[key]
            text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            return ParsedToolCall(name=obj["name"], arguments=text)
    return ParsedToolCall(name=obj["name"], arguments="{}")


def decode_json_values(text: str, start: int, separators: str) -> tuple[list[Any], int, bool]:
    """Decode consecutive JSON values of ``text`` from ``start``, skipping whitespace and the
    characters in ``separators`` between them.

    Returns:
        ``(values, end, stuck)``: the complete values, where decoding stopped, and whether it
        stopped at text that is not (yet) a complete JSON value.
    """
    decoder = json.JSONDecoder()
    values, pos = [], start
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
            pos += 1
        if pos >= len(text):
            return values, pos, False
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return values, pos, True
        values.append(value)


def held_back_prefix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker`` (text that
    may still turn into the marker, so a stream holds it back)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
