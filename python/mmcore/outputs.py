"""Results of generation, shaped like vLLM's (same class and field names)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """The log-probability of one token at one position.

    Attributes:
        logprob: natural-log probability under the model's distribution.
        rank: 1-based rank of the token in that distribution (1 = most likely).
        decoded_token: the token's text on its own.
    """

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# Per position: token id -> Logprob (the top-k tokens and the chosen/actual one).
SampleLogprobs = list[dict[int, Logprob]]
# Per prompt position; the first is None (nothing predicts the first token).
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class RequestMetrics:
    """Times of one request (``time.time()`` seconds), as vLLM's.

    Attributes:
        arrival_time: when the engine took the request.
        last_token_time: when its latest token arrived.
        first_scheduled_time: when a step first scheduled it.
        first_token_time: when its first generated token arrived.
        time_in_queue: first_scheduled_time - arrival_time.
        finished_time: when its last completion finished.
    """

    arrival_time: float
    last_token_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    time_in_queue: float | None = None
    finished_time: float | None = None


@dataclass
class CompletionOutput:
    """One completion of a prompt.

    Attributes:
        index: which of the ``n`` completions this is.
        text: the generated text.
        token_ids: the generated token ids.
        cumulative_logprob: sum of the sampled tokens' log-probabilities (when ``logprobs``
            was asked for, else None).
        logprobs: per generated token, token id -> :class:`Logprob` for the top tokens and
            the sampled one (when asked for).
        finish_reason: ``"stop"``, ``"length"``, ``"abort"``, ``"error"`` or None while running.
        stop_reason: the stop string or token id that ended it, if any.
    """

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: SampleLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def finished(self) -> bool:
        """True once the completion has a finish reason."""
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """All completions of one prompt.

    Attributes:
        request_id: the id given to or made by the engine.
        prompt: the prompt text (None when token ids were given).
        prompt_token_ids: the prompt's tokens after placeholder expansion (and truncation).
        prompt_logprobs: per prompt token, when ``prompt_logprobs`` was asked for.
        outputs: the completions, by index.
        finished: whether every completion has finished.
        metrics: the request's times.
        num_cached_tokens: prompt tokens found in the prefix cache.
        error: why the engine failed this request (finish reason ``"error"``), else None.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool = False
    metrics: RequestMetrics | None = None
    num_cached_tokens: int | None = None
    error: str | None = None
