"""Which request fields the server refuses: those OpenAI or vLLM define that mmcore does not
implement (each with what to do instead), and any field no model declares. A refusal names the
field, so the client gets a 400 saying which one, never a silently ignored field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

# Fields OpenAI or vLLM define that mmcore does not implement, with what to do instead.
# Refused when set to anything but an empty value.
UNSUPPORTED_SHARED = {
    "use_beam_search": "beam search is not supported",
    "length_penalty": "length_penalty applies to beam search, which is not supported",
    "guided_decoding_backend": "the structured output backend is chosen by the server (xgrammar)",
    "guided_whitespace_pattern": "guided_whitespace_pattern is not supported",
    "logits_processors": "per-request logits processors are not supported",
    "priority": "request priorities are not supported (first come, first served)",
    "return_tokens_as_token_ids": "return_tokens_as_token_ids is not supported",
    "kv_transfer_params": "KV transfer is not supported",
    "vllm_xargs": "vllm_xargs is not supported",
    "store": "stored completions are not supported",
    "metadata": "metadata is only stored with store=true, which is not supported",
    "service_tier": "service tiers are not supported",
}
UNSUPPORTED_CHAT = {
    **UNSUPPORTED_SHARED,
    "functions": "the legacy 'functions' field is not supported; use 'tools'",
    "function_call": "the legacy 'function_call' field is not supported; use 'tool_choice'",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "reasoning_effort is not supported",
    "web_search_options": "web search is not supported",
    "documents": "documents (RAG chat templates) are not supported",
}
UNSUPPORTED_COMPLETION = {
    **UNSUPPORTED_SHARED,
    "suffix": "suffix (fill-in-the-middle) is not supported",
}
_EMPTY = (None, False, "", [], {})


def refuse_unknown(cls: type[BaseModel], data: Any, unsupported: dict[str, str]) -> Any:
    """A request model's ``mode="before"`` check of its raw fields.

    Args:
        cls: the pydantic model (its declared fields and aliases are the known ones).
        data: the raw request body.
        unsupported: field -> why it is refused.

    Returns:
        ``data`` without the unsupported fields that were sent empty.

    Raises:
        PydanticCustomError: an unsupported field with a value, or an unknown field; its
            context names the field (the error body's ``param``).
    """
    if not isinstance(data, dict):
        return data
    known = {f.alias or name for name, f in cls.model_fields.items()} | set(cls.model_fields)
    kept = {}
    for name, value in data.items():
        if name in unsupported:
            if value not in _EMPTY:
                raise PydanticCustomError(
                    "unsupported_field",
                    "unsupported field '{field}': {reason}",
                    {"field": name, "reason": unsupported[name]},
                )
        elif name not in known:
            raise PydanticCustomError(
                "unknown_field",
                "unknown field '{field}' (not an OpenAI or vLLM request field mmcore serves)",
                {"field": name},
            )
        else:
            kept[name] = value
    return kept


# Message fields a client sends back with an earlier reply (the openai SDK's message objects);
# accepted when empty, refused when they carry something mmcore would not show the model.
UNSUPPORTED_MESSAGE = {
    "refusal": "refusals in earlier messages are not supported",
    "audio": "audio in earlier messages is not supported",
    "function_call": "the legacy 'function_call' is not supported; use 'tool_calls'",
    "annotations": "message annotations are not supported",
    "reasoning_content": "reasoning content in earlier messages is not supported",
}
