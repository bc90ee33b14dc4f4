"""Calls forced by ``tool_choice``: the output is grammar-constrained JSON, not free text.

``required``: a JSON array of ``{"name", "parameters"}`` objects (see
``structured.required_tool_call_schema``). A named function: the output is its arguments.
"""

from __future__ import annotations

from mmcore.server.tool_parsers.base import (
    ScanResult,
    ToolParser,
    call_from_json,
    decode_json_values,
)


class RequiredToolCallsParser(ToolParser):
    """Reads the array elements as they complete, so each call streams once it is whole."""

    name = "required"

    def scan(self, text: str, final: bool) -> ScanResult:
        stripped = text.lstrip()
        if not stripped:
            return ScanResult("", [], failed=final)
        if not stripped.startswith("["):
            return ScanResult("", [], failed=True)
        start = len(text) - len(stripped) + 1
        values, end, stuck = decode_json_values(text, start, ",")
        calls = [call_from_json(v, ("parameters", "arguments")) for v in values]
        closed = stuck and text[end] == "]"
        if any(c is None for c in calls) or (final and not closed):
            return ScanResult("", [c for c in calls if c is not None], failed=True)
        return ScanResult("", calls)
