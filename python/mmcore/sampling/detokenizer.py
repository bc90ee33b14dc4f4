"""Incremental detokenization with stop strings.

Each new token decodes a short window of ids (the last few already-read ones give the
tokenizer its context, e.g. a leading space), so a step costs O(1) in the output length.
"""

from __future__ import annotations

_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Text of one completion, grown a token at a time.

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompt_token_ids: the prompt, whose last tokens give the first output token context.
        stop: strings that end the completion; the text is cut before the first one.
        skip_special_tokens: drop special tokens from the text.
    """

    def __init__(
        self,
        tokenizer,
        prompt_token_ids: list[int],
        stop: list[str],
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = stop
        self._max_stop_len = max((len(s) for s in stop), default=0)
        self._skip_special = skip_special_tokens
        self.text = ""
        self.stop_reason: str | None = None

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

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
        for stop in self._stop:
            at = self.text.find(stop, search_from)
            if at != -1:
                self.text = self.text[:at]
                self.stop_reason = stop
                return stop
        return None

    def stream_text(self, finished: bool) -> str:
        """Text safe to show now: while running, hold back what could still start a stop string."""
        if finished or self._max_stop_len <= 1:
            return self.text
        return self.text[: max(0, len(self.text) - (self._max_stop_len - 1))]
