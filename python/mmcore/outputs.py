"""Results of generation, shaped like vLLM's."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    """One completion of a prompt.

    Attributes:
        index: which of the ``n`` completions this is.
        text: the generated text (stop strings removed).
        token_ids: the generated token ids.
        finish_reason: ``"stop"``, ``"length"``, ``"abort"``, ``"error"`` or None while running.
        logprobs: per generated token, a dict token id -> log-probability (top-n and the sampled
            token), when requested.
        stop_reason: the stop string or token id that ended it, if any.
    """

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[dict[int, float]] | None = None
    stop_reason: str | int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """All completions of one prompt.

    Attributes:
        request_id: the id given to or made by the engine.
        prompt: the prompt text (None when token ids were given).
        prompt_token_ids: the prompt's tokens after placeholder expansion.
        outputs: the completions, by index.
        finished: whether every completion has finished.
        error: why the engine failed this request (finish reason ``"error"``), else None.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    error: str | None = None
