"""Incremental detokenization with stop strings.

Each new token decodes a short window of ids (the last few already-read ones give the
tokenizer its context, e.g. a leading space), so a step costs O(1) in the output length.
"""

from __future__ import annotations

import contextlib
import weakref

_CONTEXT_TOKENS = 5
_ADDED_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def backend_decode(tokenizer):
    """The ``tokenizers`` decode that ``tokenizer.decode`` ends in, when the Hugging Face
    wrapper adds nothing to it (a fast tokenizer without overrides or clean-up); else None.

    Called directly it gives the same text at a quarter of the cost per call (the wrapper
    converts and checks its input in Python on every call).
    """
    try:
        from tokenizers import Tokenizer
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: keep the wrapper
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    kind = type(tokenizer)
    if (
        not isinstance(backend, Tokenizer)
        or getattr(kind, "decode", None) is not PreTrainedTokenizerBase.decode
        or getattr(kind, "_decode", None) is not TokenizersBackend._decode
        or getattr(tokenizer, "clean_up_tokenization_spaces", True)
    ):
        return None
    return backend.decode


def added_tokens(tokenizer) -> dict[int, str]:
    """Token id -> text of the tokenizer's added (special or user-added) tokens, cached."""
    try:
        return _ADDED_TOKENS[tokenizer]
    except (KeyError, TypeError):
        pass
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    table = {int(i): str(getattr(t, "content", t)) for i, t in decoder.items()}
    with contextlib.suppress(TypeError):  # not weak-referenceable: decoded again next time
        _ADDED_TOKENS[tokenizer] = table
    return table


class IncrementalDetokenizer:
    """Text of one completion, grown a token at a time.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompt_token_ids: the prompt, whose last tokens give the first output token context.
        stop: strings that end the completion.
        skip_special_tokens: drop special tokens from the text.
        spaces_between_special_tokens: True decodes special/added tokens as the tokenizer does
            (HF slow tokenizers put spaces around them; fast ones decode natively); False
            glues each one's raw text to its neighbours, with no space in between.
        include_stop_str_in_output: keep the stop string at the end of the text (else the
            text is cut before it).
    """

    def __init__(
        self,
        tokenizer,
        prompt_token_ids: list[int],
        stop: list[str],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        include_stop_str_in_output: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._backend_decode = backend_decode(tokenizer)
        self._ids = [int(i) for i in prompt_token_ids[-_CONTEXT_TOKENS:]]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = stop
        self._max_stop_len = max((len(s) for s in stop), default=0)
        self._skip_special = skip_special_tokens
        self._include_stop = include_stop_str_in_output
        self._glued = {} if spaces_between_special_tokens else added_tokens(tokenizer)
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.text = ""
        self.stop_reason: str | None = None

    def _decode_run(self, ids: list[int]) -> str:
        if self._backend_decode is not None:
            return self._backend_decode(ids, self._skip_special)
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _decode(self, ids: list[int]) -> str:
        if not self._glued or not any(i in self._glued for i in ids):
            return self._decode_run(ids)
        # HF slow tokenizers' rule without spaces: decode runs of ordinary tokens, and put
        # each added token's raw text between them.
        parts, run = [], []
        for token in ids:
            if self._skip_special and token in self._special:
                continue  # dropped before splitting, so the text around it decodes as one run
            if token not in self._glued:
                run.append(token)
                continue
            if run:
                parts.append(self._decode_run(run))
                run = []
            parts.append(self._glued[token])
        if run:
            parts.append(self._decode_run(run))
        return "".join(parts)

    def append(self, token_id: int) -> str | None:
        """Add one generated token; return the stop string it completed, if any."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        # A trailing U+FFFD is an incomplete UTF-8 sequence: wait for the next token.
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return None
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return self._add_text(delta)

    def _add_text(self, delta: str) -> str | None:
        search_from = max(0, len(self.text) - self._max_stop_len + 1)
        self.text += delta
        hits = [
            (at, stop) for stop in self._stop if (at := self.text.find(stop, search_from)) != -1
        ]
        if not hits:
            return None
        at, stop = min(hits, key=lambda hit: hit[0])  # the earliest stop string wins
        self.text = self.text[: at + len(stop) if self._include_stop else at]
        self.stop_reason = stop
        return stop

    def stream_text(self, finished: bool) -> str:
        """Text safe to show now: while running, hold back what could still start a stop string."""
        if finished or self._max_stop_len <= 1:
            return self.text
        return self.text[: max(0, len(self.text) - (self._max_stop_len - 1))]
