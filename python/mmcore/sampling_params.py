"""Sampling parameters, with vLLM's names, defaults and checks."""

from __future__ import annotations

import json as _json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

_MAX_ABS_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values


@dataclass
class StructuredOutputsParams:
    """A constraint on the text of a completion (one kind per request), as vLLM's.

    Args:
        json: a JSON schema (dict or JSON string); the output is JSON valid under it.
        regex: a regular expression the whole output matches.
        choice: the output is exactly one of these strings.
        grammar: an EBNF grammar (GBNF style, root rule ``root``) the output belongs to.
        json_object: any JSON object (OpenAI's ``response_format={"type": "json_object"}``).
        structural_tag: an xgrammar structural tag (JSON string), for tool-call formats.
        disable_fallback: accepted for vLLM compatibility (mmcore has one backend, xgrammar).
        disable_any_whitespace: JSON without free whitespace between tokens.
        disable_additional_properties: JSON objects take no properties beyond the schema's.
        whitespace_pattern: not supported by xgrammar; must be None.

    Raises:
        ValueError: no constraint, several kinds at once, or a malformed value.
    """

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    def __post_init__(self) -> None:
        kinds = self.kinds()
        if not kinds:
            raise ValueError(
                "structured_outputs needs one constraint: json, regex, choice, grammar, "
                "json_object or structural_tag"
            )
        if len(kinds) > 1:
            raise ValueError(
                f"structured_outputs takes one kind of constraint, got several: {kinds}"
            )
        if self.json is not None:
            if isinstance(self.json, str):
                try:
                    _json.loads(self.json)
                except _json.JSONDecodeError as err:
                    raise ValueError(f"structured_outputs.json is not valid JSON: {err}") from err
            elif not isinstance(self.json, dict):
                raise ValueError("structured_outputs.json must be a JSON schema (dict or str)")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise ValueError("structured_outputs.regex must be a non-empty string")
        if self.choice is not None and (
            not isinstance(self.choice, (list, tuple))
            or not self.choice
            or any(not isinstance(c, str) or not c for c in self.choice)
        ):
            raise ValueError(
                "structured_outputs.choice must be a non-empty list of non-empty strings"
            )
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar):
            raise ValueError("structured_outputs.grammar must be a non-empty EBNF string")
        if self.structural_tag is not None and not isinstance(self.structural_tag, str):
            raise ValueError("structured_outputs.structural_tag must be a JSON string")
        if self.whitespace_pattern is not None:
            raise ValueError(
                "structured_outputs.whitespace_pattern is not supported (the xgrammar backend "
                "takes disable_any_whitespace instead)"
            )

    def kinds(self) -> list[str]:
        """The names of the constraints that are set."""
        names = ["json", "regex", "choice", "grammar", "structural_tag"]
        kinds = [n for n in names if getattr(self, n) is not None]
        if self.json_object:
            kinds.append("json_object")
        return kinds

    @property
    def kind(self) -> str:
        """The one constraint that is set, e.g. ``"json"``."""
        return self.kinds()[0]


# vLLM's earlier name of the same class.
GuidedDecodingParams = StructuredOutputsParams


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """How to pick the tokens of one prompt's completions (vLLM's fields and defaults).

    Args:
        n: completions per prompt.
        presence_penalty: subtracted once from the logit of every token already generated
            (OpenAI's definition), in [-2, 2].
        frequency_penalty: subtracted from a token's logit once per time it was generated,
            in [-2, 2].
        repetition_penalty: HF/CTRL penalty on tokens of the prompt and the output: positive
            logits are divided by it, negative ones multiplied (1 = off), > 0.
        temperature: 0 means greedy.
        top_p: nucleus sampling mass in (0, 1].
        top_k: keep the k most likely tokens; 0 or -1 keeps all.
        min_p: drop tokens whose probability is below ``min_p`` times the top one.
        seed: per-request seed; the same seed gives the same tokens.
        stop: strings that end the completion.
        stop_token_ids: tokens that end the completion besides EOS.
        bad_words: words never generated (each tokenized with and without a leading space;
            the last token of a word is banned where the earlier ones were just generated).
        include_stop_str_in_output: keep the stop string at the end of the text.
        ignore_eos: keep generating past EOS.
        max_tokens: most tokens to generate (None: up to the model's length limit).
        min_tokens: generate at least this many before EOS or stop tokens count.
        logprobs: per generated token, return this many top log-probabilities plus the
            sampled token's (-1: the whole vocabulary; None: none).
        prompt_logprobs: the same for every prompt token after the first.
        detokenize: build ``text`` (False: token ids only; stop strings then cannot work).
        skip_special_tokens: drop special tokens from the text.
        spaces_between_special_tokens: put spaces around special/added tokens in the text.
        truncate_prompt_tokens: keep only the last k prompt tokens (-1: as many as the model
            length leaves room for; None: no truncation).
        logit_bias: token id -> value added to its logit (clamped to [-100, 100]).
        allowed_token_ids: only these tokens may be generated.
        structured_outputs: a grammar constraint (JSON schema, regex, choice, EBNF grammar).
        guided_decoding: vLLM's earlier name of ``structured_outputs``.

    Raises:
        ValueError: naming the first field whose value is out of range.
    """

    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    truncate_prompt_tokens: int | None = None
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    structured_outputs: StructuredOutputsParams | None = None
    guided_decoding: StructuredOutputsParams | None = None
    _stop_list: list[str] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        self._stop_list = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.guided_decoding is not None:
            if self.structured_outputs is not None:
                raise ValueError("give structured_outputs or guided_decoding, not both")
            self.structured_outputs, self.guided_decoding = self.guided_decoding, None
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        if self.logit_bias is not None:
            self.logit_bias = _clamped_logit_bias(self.logit_bias)
        if self.allowed_token_ids is not None:
            self.allowed_token_ids = list(self.allowed_token_ids)
        if self.bad_words is not None:
            self.bad_words = (
                [self.bad_words] if isinstance(self.bad_words, str) else list(self.bad_words)
            )
        self.validate()

    @property
    def stop_strings(self) -> list[str]:
        """The stop strings as a list."""
        return self._stop_list

    @property
    def greedy(self) -> bool:
        """True when the completion is the argmax at every step."""
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def has_penalties(self) -> bool:
        """True when a presence, frequency or repetition penalty is on."""
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range value."""
        if not _is_int(self.n) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        _check_types(self)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 (disabled) or >= 1, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < -1):
                raise ValueError(f"{name} must be -1 (all) or >= 0, got {value!r}")
        if self.truncate_prompt_tokens is not None and (
            not _is_int(self.truncate_prompt_tokens)
            or self.truncate_prompt_tokens == 0
            or self.truncate_prompt_tokens < -1
        ):
            raise ValueError(
                f"truncate_prompt_tokens must be -1 or >= 1, got {self.truncate_prompt_tokens!r}"
            )
        if any(not isinstance(s, str) or not s for s in self._stop_list):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings")
        if self._stop_list and not self.detokenize:
            raise ValueError("stop strings need detokenize=True")
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            raise ValueError(
                f"stop_token_ids must be non-negative integers, got {self.stop_token_ids}"
            )
        if self.bad_words is not None and any(
            not isinstance(w, str) or not w for w in self.bad_words
        ):
            raise ValueError("bad_words must be a list of non-empty strings")
        if self.allowed_token_ids is not None and (
            not self.allowed_token_ids
            or any(not _is_int(t) or t < 0 for t in self.allowed_token_ids)
        ):
            raise ValueError("allowed_token_ids must be a non-empty list of token ids (ints >= 0)")
        if self.structured_outputs is not None and not isinstance(
            self.structured_outputs, StructuredOutputsParams
        ):
            raise ValueError("structured_outputs must be a StructuredOutputsParams")


def _clamped_logit_bias(bias: Any) -> dict[int, float]:
    """Token ids as ints (OpenAI sends strings), values clamped to [-100, 100]."""
    if not isinstance(bias, dict):
        raise ValueError("logit_bias must be a dict of token id -> bias")
    clamped = {}
    for key, value in bias.items():
        try:
            token_id = int(key)
            value = float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"logit_bias entry {key!r}: {value!r} is not token id -> number"
            ) from err
        if token_id < 0 or value != value:  # NaN
            raise ValueError(f"logit_bias entry {key!r}: {value!r} is out of range")
        clamped[token_id] = max(-_MAX_ABS_LOGIT_BIAS, min(_MAX_ABS_LOGIT_BIAS, value))
    return clamped


_INT_FIELDS = ("top_k", "min_tokens")
_OPTIONAL_INT_FIELDS = ("seed", "max_tokens", "logprobs")
_FLOAT_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


def _check_types(params: SamplingParams) -> None:
    """Integers are ints and floats finite numbers (NaN passes every range comparison)."""
    for name in _INT_FIELDS + _OPTIONAL_INT_FIELDS:
        value = getattr(params, name)
        if value is None and name in _OPTIONAL_INT_FIELDS:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    for name in _FLOAT_FIELDS:
        value = getattr(params, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
