"""Llama-3.x JSON tool calls: the whole reply is ``{"name": ..., "parameters": {...}}`` (several
separated by ``;``), optionally after ``<|python_tag|>``; any other reply is plain content."""

from __future__ import annotations

from mmcore.server.tool_parsers.base import (
    ScanResult,
    ToolParser,
    call_from_json,
    decode_json_values,
)

_PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    """A reply whose first non-blank character is ``{`` (or the python tag) holds tool calls."""

    name = "llama3_json"

    def scan(self, text: str, final: bool) -> ScanResult:
        stripped = text.lstrip()
        offset = len(text) - len(stripped)
        if stripped.startswith(_PYTHON_TAG):
            start = offset + len(_PYTHON_TAG)
        elif stripped.startswith("{"):
            start = offset
        elif not final and _PYTHON_TAG.startswith(stripped):
            return ScanResult("", [])  # blank so far, or the start of the tag: undecided
        else:
            return ScanResult(text, [])
        values, _, stuck = decode_json_values(text, start, ";")
        calls = [call_from_json(v, ("parameters", "arguments")) for v in values]
        if any(c is None for c in calls) or (final and stuck):
            return ScanResult("", [c for c in calls if c is not None], failed=True)
        return ScanResult("", calls)
