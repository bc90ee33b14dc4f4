"""Request bodies of the OpenAI API (the fields mmcore serves), validated by pydantic.

Out-of-range values fail validation (answered with 400); fields OpenAI defines that mmcore does
not implement are refused when set, rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmcore.engine.request_checks import INT32_MAX
from mmcore.sampling_params import SamplingParams

MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP_LEN = 1024  # characters of one stop string
MAX_STOP_TOKEN_IDS = 1024
MAX_TIMEOUT_S = 24 * 3600.0

# Fields of OpenAI's schema that mmcore does not implement: refused when given a non-default value.
_UNSUPPORTED_CHAT = {
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "response_format": None,
    "logit_bias": None,
    "audio": None,
    "prediction": None,
}
_UNSUPPORTED_COMPLETION = {"suffix": None, "logit_bias": None}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatMessage(BaseModel):
    """One chat message; content parts are checked by the engine's chat renderer."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class _SamplingFields(BaseModel):
    """Sampling fields shared by chat and completions (OpenAI names plus vLLM's extras)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    stop: str | list[Annotated[str, Field(max_length=MAX_STOP_LEN)]] | None = None
    stop_token_ids: (
        Annotated[
            list[Annotated[int, Field(ge=0, le=INT32_MAX)]], Field(max_length=MAX_STOP_TOKEN_IDS)
        ]
        | None
    ) = None
    min_tokens: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Seconds from arrival after which the request is aborted (mmcore's extension).
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] | None = None

    def _check_common(self, unsupported: dict[str, Any]) -> None:
        extras = self.model_extra or {}
        for name, default in unsupported.items():
            if extras.get(name, default) not in (default, [], {}):
                raise ValueError(f"{name} is not supported by this server")
        if self.presence_penalty or self.frequency_penalty:
            raise ValueError("presence_penalty and frequency_penalty are not supported")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings are allowed")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        return SamplingParams(
            n=self.n,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=0 if self.top_k is None else self.top_k,
            min_p=0.0 if self.min_p is None else self.min_p,
            seed=self.seed,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=self.skip_special_tokens,
        )


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        self._check_common(_UNSUPPORTED_CHAT)
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        return self

    def to_sampling_params(self) -> SamplingParams:
        """The engine's sampling parameters for this request (raises ValueError)."""
        limit = self.max_completion_tokens or self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling_params(limit, logprobs)

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as plain dicts, the form ``Engine.chat_prompt`` takes."""
        return [m.model_dump(exclude_none=True) for m in self.messages]


TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
PromptInput = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``."""

    prompt: PromptInput
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool = False
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        self._check_common(_UNSUPPORTED_COMPLETION)
        if self.echo:
            raise ValueError("echo is not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of different from n is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    def to_sampling_params(self) -> SamplingParams:
        """The engine's sampling parameters for this request (raises ValueError)."""
        return self._sampling_params(self.max_tokens, self.logprobs)

    def prompt_list(self) -> list[str | dict[str, list[int]]]:
        """Each prompt as the engine takes it: a string or ``{"prompt_token_ids": [...]}``."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [{"prompt_token_ids": list(p)}]
        return [x if isinstance(x, str) else {"prompt_token_ids": list(x)} for x in p]
