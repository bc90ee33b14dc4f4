"""Request bodies of the OpenAI API (the fields mmcore serves, plus vLLM's extensions).

One pydantic model per request type. Out-of-range values fail validation (answered with 400).
Every field a request may carry is declared here: an unknown field, or a known one that mmcore
does not implement, is refused with a 400 naming it rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmcore.engine.request_checks import INT32_MAX
from mmcore.sampling_params import SamplingParams
from mmcore.server.structured import structured_outputs_of
from mmcore.server.tool_protocol import (
    AssistantToolCall,
    ChatTool,
    ResponseFormat,
    StructuredOutputsField,
    ToolChoice,
)
from mmcore.server.unsupported_fields import (
    UNSUPPORTED_CHAT,
    UNSUPPORTED_COMPLETION,
    UNSUPPORTED_MESSAGE,
    refuse_unknown,
)

MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # entries of one request's logit_bias
MAX_STOP_LEN = 1024  # characters of one stop string
MAX_STOP_TOKEN_IDS = 1024
MAX_TIMEOUT_S = 24 * 3600.0


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    continuous_usage_stats: bool = False


class ChatMessage(BaseModel):
    """One chat message; content parts are checked by the engine's chat renderer."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_fields(cls, data: Any) -> Any:
        return refuse_unknown(cls, data, UNSUPPORTED_MESSAGE)


class _SamplingFields(BaseModel):
    """Sampling fields shared by chat and completions (OpenAI names plus vLLM's extras)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    best_of: Annotated[int, Field(ge=1)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    stop: str | list[Annotated[str, Field(max_length=MAX_STOP_LEN)]] | None = None
    stop_token_ids: (
        Annotated[
            list[Annotated[int, Field(ge=0, le=INT32_MAX)]], Field(max_length=MAX_STOP_TOKEN_IDS)
        ]
        | None
    ) = None
    include_stop_str_in_output: bool = False
    min_tokens: Annotated[int, Field(ge=0, le=INT32_MAX)] = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    logit_bias: (
        Annotated[
            dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIAS)
        ]
        | None
    ) = None
    allowed_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    bad_words: list[str] | None = None
    prompt_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=1)] | None = None
    echo: bool = False
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsField | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for abuse tracking; accepted and logged only
    # vLLM's extra: settings of the model's multimodal processor for this request only.
    mm_processor_kwargs: dict[str, Any] | None = None
    # Seconds from arrival after which the request is aborted (mmcore's extension).
    timeout: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] | None = None

    def _check_common(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError(
                f"best_of={self.best_of} with n={self.n} is not supported: mmcore returns every "
                "completion it samples (leave best_of unset or equal to n)"
            )
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings are allowed")
        for key in self.logit_bias or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")

    def with_processor_kwargs(self, prompt: dict[str, Any]) -> dict[str, Any]:
        """``prompt`` with this request's ``mm_processor_kwargs`` (if any) attached."""
        if self.mm_processor_kwargs is None:
            return prompt
        return {**prompt, "mm_processor_kwargs": self.mm_processor_kwargs}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def _sampling_params(
        self,
        max_tokens: int | None,
        logprobs: int | None,
        structured: Any,
        defaults: dict[str, Any] | None,
    ) -> SamplingParams:
        # Unset fields take the model's generation_config defaults, as vLLM's server does.
        defaults = defaults or {}

        def pick(name: str, fallback: Any) -> Any:
            value = getattr(self, name)
            return value if value is not None else defaults.get(name, fallback)

        return SamplingParams(
            n=self.n,
            temperature=pick("temperature", 1.0),
            top_p=pick("top_p", 1.0),
            top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0),
            seed=self.seed,
            max_tokens=max_tokens if max_tokens is not None else defaults.get("max_tokens"),
            min_tokens=self.min_tokens,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=self.prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=pick("repetition_penalty", 1.0),
            logit_bias={int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            allowed_token_ids=self.allowed_token_ids,
            bad_words=self.bad_words,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            structured_outputs=structured,
        )


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[ChatTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    modalities: list[Literal["text"]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_fields(cls, data: Any) -> Any:
        return refuse_unknown(cls, data, UNSUPPORTED_CHAT)

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        self._check_common()
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError(
                "continue_final_message and add_generation_prompt cannot both be true "
                "(set add_generation_prompt=false to continue the last message)"
            )
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs an assistant message last")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ValueError("tool_choice needs tools")
        if not isinstance(self.tool_choice, str) and self.tool_choice is not None:
            names = [t.function.name for t in self.tools or []]
            if self.tool_choice.function.name not in names:
                raise ValueError(
                    f"tool_choice names the function {self.tool_choice.function.name!r}, "
                    f"which is not among the tools {names}"
                )
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools must have distinct function names")
        return self

    @property
    def effective_tool_choice(self) -> str | None:
        """``"none"``, ``"auto"``, ``"required"``, ``"named"``, or None without tools."""
        if not self.tools:
            return None
        if self.tool_choice is None:
            return "auto"
        return self.tool_choice if isinstance(self.tool_choice, str) else "named"

    def to_sampling_params(self, defaults: dict[str, Any] | None = None) -> SamplingParams:
        """The engine's sampling parameters for this request (raises ValueError).

        Args:
            defaults: SamplingParams values for fields the request leaves unset (the model's
                generation_config).
        """
        limit = self.max_completion_tokens or self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling_params(limit, logprobs, structured_outputs_of(self), defaults)

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as plain dicts, the form ``Engine.chat_prompt`` takes."""
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """``tools`` as the chat template takes them (HF ``apply_chat_template(tools=...)``)."""
        if not self.tools:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]


TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
PromptInput = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``."""

    prompt: PromptInput
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_fields(cls, data: Any) -> Any:
        return refuse_unknown(cls, data, UNSUPPORTED_COMPLETION)

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        self._check_common()
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    def to_sampling_params(self, defaults: dict[str, Any] | None = None) -> SamplingParams:
        """The engine's sampling parameters for this request (raises ValueError); ``defaults``
        as for chat."""
        return self._sampling_params(
            self.max_tokens, self.logprobs, structured_outputs_of(self), defaults
        )

    def prompt_list(self) -> list[str | dict[str, list[int]]]:
        """Each prompt as the engine takes it: a string or ``{"prompt_token_ids": [...]}``."""
        p = self.prompt
        if isinstance(p, str):
            prompts = [p]
        elif all(isinstance(x, int) for x in p):
            prompts = [{"prompt_token_ids": list(p)}]
        else:
            prompts = [x if isinstance(x, str) else {"prompt_token_ids": list(x)} for x in p]
        if self.mm_processor_kwargs is None:
            return prompts
        return [
            self.with_processor_kwargs({"prompt": x} if isinstance(x, str) else x) for x in prompts
        ]


class TokenizeCompletionRequest(BaseModel):
    """``POST /tokenize`` with a text prompt."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(BaseModel):
    """``POST /tokenize`` with chat messages: the prompt the chat template renders, with each
    image's placeholder expanded to the tokens the model sees."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool | None = None  # None: as /v1/chat/completions tokenizes
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[ChatTool] | None = None
    return_token_strs: bool = False

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None


class DetokenizeRequest(BaseModel):
    """``POST /detokenize``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]
