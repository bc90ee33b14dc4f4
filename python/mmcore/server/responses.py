"""OpenAI response bodies and stream chunks, built from engine deltas."""

from __future__ import annotations

import json
from typing import Any

from mmcore.outputs import Logprob
from mmcore.server.stream_updates import CompletionDelta


def sse_event(payload: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


SSE_DONE = sse_event("[DONE]")


def usage(num_prompt: int, num_completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": num_prompt,
        "completion_tokens": num_completion,
        "total_tokens": num_prompt + num_completion,
    }


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def _sorted_top(logprobs: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(logprobs.items(), key=lambda kv: kv[1], reverse=True)[:k]


def _values(entry: dict[int, Logprob]) -> dict[int, float]:
    return {token_id: lp.logprob for token_id, lp in entry.items()}


def chat_logprobs(
    tokenizer, token_ids: list[int], logprobs: list[dict[int, Logprob]], top_k: int
) -> dict[str, Any]:
    """``choices[i].logprobs`` of a chat completion: per token, its logprob and the top ``k``."""
    content = []
    for token_id, entry in zip(token_ids, logprobs):
        lp = _values(entry)
        text = _token_text(tokenizer, token_id)
        top = []
        for tid, value in _sorted_top(lp, top_k):
            t = _token_text(tokenizer, tid)
            top.append({"token": t, "logprob": value, "bytes": list(t.encode())})
        content.append(
            {
                "token": text,
                "logprob": lp.get(token_id, float("-inf")),
                "bytes": list(text.encode()),
                "top_logprobs": top,
            }
        )
    return {"content": content}


def completion_logprobs(
    tokenizer,
    token_ids: list[int],
    logprobs: list[dict[int, Logprob]],
    top_k: int,
    text_offset: int = 0,
) -> dict[str, Any]:
    """``choices[i].logprobs`` of a (legacy) completion."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_offset
    for token_id, entry in zip(token_ids, logprobs):
        lp = _values(entry)
        text = _token_text(tokenizer, token_id)
        tokens.append(text)
        token_logprobs.append(lp.get(token_id, float("-inf")))
        tops.append({_token_text(tokenizer, t): v for t, v in _sorted_top(lp, top_k)})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _stream_chunk(
    kind: str,
    response_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_value: dict[str, int] | None,
    include_usage: bool,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": choices,
    }
    if include_usage:
        chunk["usage"] = usage_value
    return chunk


def chat_chunk(
    response_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_value: dict[str, int] | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``usage`` is null on every chunk but the last, if asked)."""
    return _stream_chunk(
        "chat.completion.chunk", response_id, created, model, choices, usage_value, include_usage
    )


def chat_delta_choice(index: int, delta: dict[str, Any], finish_reason: str | None, logprobs=None):
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_chunk(
    response_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_value: dict[str, int] | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    """One streamed ``text_completion`` object."""
    return _stream_chunk(
        "text_completion", response_id, created, model, choices, usage_value, include_usage
    )


class CompletionAccumulator:
    """Collects the deltas of one completion into its final text, tokens and logprobs."""

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[dict[int, Logprob]] = []
        self.finish_reason: str | None = None

    def add(self, delta: CompletionDelta) -> None:
        self.text_parts.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def prompt_logprobs_json(prompt_logprobs: list | None) -> list | None:
    """vLLM's ``prompt_logprobs`` field: per prompt token, None (the first) or
    ``{token id: {"logprob", "rank", "decoded_token"}}``."""
    if prompt_logprobs is None:
        return None
    return [
        None
        if position is None
        else {
            str(token_id): {
                "logprob": lp.logprob,
                "rank": lp.rank,
                "decoded_token": lp.decoded_token,
            }
            for token_id, lp in position.items()
        }
        for position in prompt_logprobs
    ]
