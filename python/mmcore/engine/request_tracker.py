"""The engine's record of one user request: its ``n`` completions as they grow, their text,
log-probabilities and times, turned into vLLM-shaped :class:`RequestOutput` objects."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mmcore.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from mmcore.sampling.detokenizer import IncrementalDetokenizer
from mmcore.sampling.logprobs import TokenLogprobs
from mmcore.sampling_params import SamplingParams


class TokenTexts:
    """Each token's text on its own (``Logprob.decoded_token``), decoded once per token id."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False)
            self._texts[token_id] = text
        return text


def to_logprob_dict(entry: TokenLogprobs, token_text: TokenTexts) -> dict[int, Logprob]:
    """The chosen token first, then the top-k, as vLLM orders them."""
    return {
        token_id: Logprob(logprob=value, rank=rank, decoded_token=token_text(token_id))
        for token_id, value, rank in zip(entry.token_ids, entry.logprobs, entry.ranks)
    }


@dataclass
class RequestTracker:
    """One user request: its prompt and its n completions (one core request each)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    outputs: list[CompletionOutput]
    detokenizers: list[IncrementalDetokenizer | None]
    metrics: RequestMetrics
    core_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int | None = None
    prompt_logprobs: list | None = None  # [None] + one dict per prompt position, as it arrives
    # For recomputing a completion after a failed step (step_recovery): the processed prompt
    # and the token budget it was admitted with.
    processed: Any = None
    max_tokens: int = 0
    error: str | None = None  # why the engine failed this request (finish reason "error")

    @classmethod
    def create(
        cls,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        tokenizer,
    ) -> RequestTracker:
        """A tracker with empty completions and a detokenizer each (when ``detokenize``)."""
        now = time.time()
        tracker = cls(
            request_id=request_id,
            prompt=prompt,
            prompt_token_ids=prompt_token_ids,
            params=params,
            outputs=[CompletionOutput(index=i) for i in range(params.n)],
            detokenizers=[
                IncrementalDetokenizer(
                    tokenizer,
                    prompt_token_ids,
                    params.stop_strings,
                    skip_special_tokens=params.skip_special_tokens,
                    spaces_between_special_tokens=params.spaces_between_special_tokens,
                    include_stop_str_in_output=params.include_stop_str_in_output,
                )
                if params.detokenize
                else None
                for _ in range(params.n)
            ],
            metrics=RequestMetrics(arrival_time=now, last_token_time=now),
        )
        if params.logprobs is not None:
            for out in tracker.outputs:
                out.logprobs, out.cumulative_logprob = [], 0.0
        if params.prompt_logprobs is not None:
            tracker.prompt_logprobs = [None]
        return tracker

    def mark_scheduled(self, num_cached_tokens: int) -> None:
        """The first step that scheduled the request (prefix-cache hits known then)."""
        if self.metrics.first_scheduled_time is None:
            now = time.time()
            self.metrics.first_scheduled_time = now
            self.metrics.time_in_queue = now - self.metrics.arrival_time
            self.num_cached_tokens = num_cached_tokens

    def add_token(
        self, index: int, token_id: int, logprobs: TokenLogprobs | None, token_text: TokenTexts
    ) -> str | None:
        """Append a generated token to completion ``index``; return the stop string it
        completed, if any."""
        completion = self.outputs[index]
        completion.token_ids.append(token_id)
        now = time.time()
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = now
        self.metrics.last_token_time = now
        if completion.logprobs is not None and logprobs is not None:
            completion.logprobs.append(to_logprob_dict(logprobs, token_text))
            completion.cumulative_logprob += logprobs.logprobs[0]
        detok = self.detokenizers[index]
        if detok is None:
            return None
        stop = detok.append(token_id)
        completion.text = detok.text
        return stop

    def add_prompt_logprobs(
        self, first_position: int, entries: list[TokenLogprobs], token_text: TokenTexts
    ) -> None:
        """Prompt log-probabilities of positions ``first_position ..`` (a recomputed prompt
        after preemption repeats positions; they are kept once)."""
        if self.prompt_logprobs is None:
            return
        skip = len(self.prompt_logprobs) - first_position
        for entry in entries[max(skip, 0) :]:
            self.prompt_logprobs.append(to_logprob_dict(entry, token_text))

    def finish(self, index: int, reason: str, stop_reason: str | int | None = None) -> None:
        completion = self.outputs[index]
        if completion.finish_reason is None:
            completion.finish_reason, completion.stop_reason = reason, stop_reason
        if self.finished:
            self.metrics.finished_time = time.time()

    @property
    def finished(self) -> bool:
        return all(o.finished() for o in self.outputs)

    def to_output(self) -> RequestOutput:
        complete = self.prompt_logprobs is not None and len(self.prompt_logprobs) == len(
            self.prompt_token_ids
        )
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=self.prompt_logprobs if complete else None,
            outputs=self.outputs,
            finished=self.finished,
            metrics=self.metrics,
            num_cached_tokens=self.num_cached_tokens,
            error=self.error,
        )
