"""Tool-call parsers: find function calls in a model's text output (``--tool-call-parser``)."""

from __future__ import annotations

from mmcore.server.tool_parsers.base import ParsedToolCall, ScanResult, ToolParser
from mmcore.server.tool_parsers.hermes import HermesToolParser
from mmcore.server.tool_parsers.llama3_json import Llama3JsonToolParser

# Names as vLLM spells them; "qwen" is an alias, Qwen models use the Hermes format.
TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "qwen": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
}


def get_tool_parser(name: str) -> ToolParser:
    """The parser registered as ``name``.

    Raises:
        ValueError: no such parser (the message lists the known ones).
    """
    if name not in TOOL_PARSERS:
        raise ValueError(f"unknown tool call parser {name!r}; choose from {sorted(TOOL_PARSERS)}")
    return TOOL_PARSERS[name]()


__all__ = ["TOOL_PARSERS", "ParsedToolCall", "ScanResult", "ToolParser", "get_tool_parser"]
