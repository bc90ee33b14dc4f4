"""One completion's output as OpenAI chat message parts: content and tool calls, whole or
streamed as deltas (each call's id, name and arguments once it is complete; a named function's
arguments as they are generated)."""

from __future__ import annotations

import logging
from typing import Any

from mmcore.server.tool_parsers.base import ParsedToolCall, ToolParser, new_tool_call_id

logger = logging.getLogger("mmcore.server")


class ToolCallOutput:
    """Splits one completion's text into content and tool calls.

    Args:
        parser: finds calls in free text (None: the text is plain content).
        named_function: the function ``tool_choice`` forces; the text is then its arguments.
    """

    def __init__(self, parser: ToolParser | None = None, named_function: str | None = None):
        self._parser = parser
        self._named = named_function
        self._named_id = new_tool_call_id()
        self._text = ""
        self._sent_content = 0
        self._num_sent_calls = 0

    @property
    def called(self) -> bool:
        """Whether a tool call has been emitted (so far, while streaming)."""
        return self._num_sent_calls > 0

    def message(self, text: str) -> dict[str, Any]:
        """The whole ``choices[i].message`` for a finished completion's ``text``."""
        if self._named is not None:
            call = ParsedToolCall(self._named, text, self._named_id)
            self._num_sent_calls = 1
            return {"role": "assistant", "content": None, "tool_calls": [call.to_openai()]}
        if self._parser is None:
            return {"role": "assistant", "content": text}
        result = self._parser.scan(text, final=True)
        if result.failed and not result.calls:
            logger.warning("%s tool call parser could not parse the output", self._parser.name)
            return {"role": "assistant", "content": text}
        message: dict[str, Any] = {
            "role": "assistant",
            "content": result.content if result.content or not result.calls else None,
        }
        if result.calls:
            message["tool_calls"] = [c.to_openai() for c in result.calls]
            self._num_sent_calls = len(result.calls)
        return message

    def delta(self, text: str, final: bool) -> dict[str, Any]:
        """The chat ``delta`` for ``text`` newly generated (``final``: the completion ended)."""
        self._text += text
        if self._named is not None:
            if self._num_sent_calls:
                return (
                    {"tool_calls": [{"index": 0, "function": {"arguments": text}}]} if text else {}
                )
            self._num_sent_calls = 1
            call = ParsedToolCall(self._named, text, self._named_id)
            return {"tool_calls": [{"index": 0, **call.to_openai()}]}
        if self._parser is None:
            return {"content": text} if text else {}
        result = self._parser.scan(self._text, final)
        content = result.content
        if final and result.failed and not self._num_sent_calls and not result.calls:
            content = self._text  # unparsable: the client gets what the model wrote
        delta: dict[str, Any] = {}
        if len(content) > self._sent_content:
            delta["content"] = content[self._sent_content :]
            self._sent_content = len(content)
        new_calls = result.calls[self._num_sent_calls :]
        if new_calls:
            delta["tool_calls"] = [
                {"index": self._num_sent_calls + i, **c.to_openai()}
                for i, c in enumerate(new_calls)
            ]
            self._num_sent_calls += len(new_calls)
        return delta
