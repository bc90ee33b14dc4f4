"""Hermes / Qwen tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks
(Qwen2.5, Qwen2-VL / Qwen2.5-VL, Hermes-2-Pro and other models trained on that format)."""

from __future__ import annotations

import json

from mmcore.server.tool_parsers.base import (
    ParsedToolCall,
    ScanResult,
    ToolParser,
    call_from_json,
    held_back_prefix,
)

_START = "<tool_call>"
_END = "</tool_call>"


class HermesToolParser(ToolParser):
    """Text before the first ``<tool_call>`` is the message content; each block is one call."""

    name = "hermes"

    def scan(self, text: str, final: bool) -> ScanResult:
        first = text.find(_START)
        if first < 0:
            keep = 0 if final else held_back_prefix(text, _START)
            return ScanResult(text[: len(text) - keep], [])
        calls: list[ParsedToolCall] = []
        pos = first
        while (start := text.find(_START, pos)) >= 0:
            end = text.find(_END, start)
            if end < 0 and not final:
                break  # the call is still being generated
            body = text[start + len(_START) : end if end >= 0 else len(text)]
            try:
                call = call_from_json(json.loads(body), ("arguments", "parameters"))
            except json.JSONDecodeError:
                call = None
            if call is None:
                return ScanResult(text[:first], calls, failed=True)
            calls.append(call)
            if end < 0:
                break
            pos = end + len(_END)
        return ScanResult(text[:first], calls)
