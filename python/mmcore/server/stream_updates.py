"""What a streamed request gains per engine step: deltas of new text and tokens per completion
(stop-string safe), and how updates that piled up merge into one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mmcore.outputs import Logprob, RequestOutput


@dataclass
class CompletionDelta:
    """What one completion gained in one engine step.

    Attributes:
        index: the completion's index among the request's ``n``.
        text: new text that is safe to show (no possible stop-string prefix held back).
        token_ids: the new token ids.
        logprobs: one dict token id -> :class:`~mmcore.outputs.Logprob` per new token, when asked for.
        finish_reason: ``"stop"``, ``"length"``, ``"abort"`` once finished, else None.
    """

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None


@dataclass
class StreamUpdate:
    """One step's news for one request; ``finished`` on the last update."""

    deltas: list[CompletionDelta]
    finished: bool
    prompt_logprobs: list | None = None  # once, when the request asked for them


@dataclass
class _Active:
    """Engine-thread bookkeeping of one request being streamed."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    hold_back: int  # characters that could still be the start of a stop string
    sent_chars: list[int]
    sent_tokens: list[int]
    done: list[bool]
    sent_prompt_logprobs: bool = False


def merge_updates(first: StreamUpdate, second: StreamUpdate) -> StreamUpdate:
    """One update with what ``first`` and then ``second`` brought (per completion: text and
    tokens appended, the later finish reason)."""
    merged = {d.index: d for d in first.deltas}
    for d in second.deltas:
        before = merged.get(d.index)
        if before is None:
            merged[d.index] = d
            continue
        logprobs = None
        if before.logprobs is not None or d.logprobs is not None:
            logprobs = (before.logprobs or []) + (d.logprobs or [])
        merged[d.index] = CompletionDelta(
            d.index,
            before.text + d.text,
            before.token_ids + d.token_ids,
            logprobs,
            d.finish_reason or before.finish_reason,
        )
    return StreamUpdate(
        sorted(merged.values(), key=lambda d: d.index),
        second.finished,
        first.prompt_logprobs if first.prompt_logprobs is not None else second.prompt_logprobs,
    )


def _deltas(active: _Active, output: RequestOutput) -> list[CompletionDelta]:
    """New text/tokens of each completion since the last update (stop-string safe)."""
    deltas = []
    for i, completion in enumerate(output.outputs):
        if active.done[i]:
            continue
        finished = completion.finish_reason is not None
        text = completion.text
        safe_len = len(text) if finished else max(0, len(text) - active.hold_back)
        new_text = text[active.sent_chars[i] : safe_len] if safe_len > active.sent_chars[i] else ""
        active.sent_chars[i] = max(active.sent_chars[i], safe_len)
        num_tokens = len(completion.token_ids)
        new_tokens = completion.token_ids[active.sent_tokens[i] : num_tokens]
        new_logprobs = (
            completion.logprobs[active.sent_tokens[i] : num_tokens]
            if completion.logprobs is not None
            else None
        )
        active.sent_tokens[i] = num_tokens
        active.done[i] = finished
        if new_text or new_tokens or finished:
            deltas.append(
                CompletionDelta(i, new_text, new_tokens, new_logprobs, completion.finish_reason)
            )
    return deltas


def output_update(active: _Active, output: RequestOutput) -> StreamUpdate | None:
    """One request's news of a step: its new text/token deltas (stop-string safe) and its
    prompt log-probs the first time they come; None when there is nothing to send."""
    deltas = _deltas(active, output)
    prompt_logprobs = getattr(output, "prompt_logprobs", None)
    if prompt_logprobs is None or active.sent_prompt_logprobs:
        prompt_logprobs = None
    else:
        active.sent_prompt_logprobs = True
    if deltas or output.finished or prompt_logprobs is not None:
        return StreamUpdate(deltas, output.finished, prompt_logprobs)
    return None
