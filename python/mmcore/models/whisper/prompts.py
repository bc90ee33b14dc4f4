"""Whisper's decoder prompts and timestamp tokens, from a tokenizer's special tokens.

A decoder prompt is ``[<|startofprev|> previous text] <|startoftranscript|> <|lang|> <|task|>
[<|notimestamps|>]``; with timestamps the model writes ``<|t0|> text <|t1|>`` pairs, each
timestamp token ``<|0.00|> ... <|30.00|>`` standing for 0.02 s steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

TIME_PRECISION = 0.02  # seconds per timestamp token
TASKS = ("transcribe", "translate")


@dataclass
class Segment:
    """A span of text with its start and end in seconds (from timestamp tokens)."""

    start: float
    end: float
    token_ids: list[int]
    indices: list[int]  # positions of token_ids among the generated tokens


class WhisperTokens:
    """The special token ids of a Whisper tokenizer and the prompts built from them.

    Args:
        tokenizer: the checkpoint's tokenizer (Whisper's special tokens in its vocabulary).
        multilingual: False for English-only checkpoints (``*.en``, ``is_multilingual: false``
            in generation_config.json): their prompts carry no language or task token.

    Raises:
        ValueError: the tokenizer lacks one of Whisper's required special tokens.
    """

    def __init__(self, tokenizer, multilingual: bool = True):
        self.tokenizer = tokenizer
        self.multilingual = multilingual
        vocab = tokenizer.get_vocab()

        def need(token: str) -> int:
            if token not in vocab:
                raise ValueError(f"the tokenizer has no {token} token: not a Whisper tokenizer")
            return int(vocab[token])

        self.start_of_transcript = need("<|startoftranscript|>")
        self.end_of_text = need("<|endoftext|>")
        self.transcribe = need("<|transcribe|>")
        self.translate = need("<|translate|>")
        self.no_timestamps = need("<|notimestamps|>")
        self.start_of_prev = vocab.get("<|startofprev|>")
        self.timestamp_begin = int(vocab.get("<|0.00|>", self.no_timestamps + 1))
        self.languages = {
            code: int(vocab[f"<|{code}|>"])
            for code in (LANGUAGES if multilingual else ("en",))
            if f"<|{code}|>" in vocab
        }

    def language_code(self, language: str) -> str:
        """``"en"`` for ``"en"``, ``"English"`` or ``"english"``; ValueError if unknown."""
        key = language.strip().lower()
        code = TO_LANGUAGE_CODE.get(key, key)
        if code not in self.languages:
            raise ValueError(
                f"unsupported language {language!r}; this model knows: "
                f"{', '.join(sorted(self.languages))}"
            )
        return code

    def decoder_prompt(
        self,
        language: str | None,
        task: str = "transcribe",
        *,
        timestamps: bool = False,
        previous_text: str | None = None,
        max_previous_tokens: int = 223,
    ) -> list[int]:
        """Token ids of a decoder prompt.

        Args:
            language: language code or name; None leaves the language token out.
            task: ``"transcribe"`` or ``"translate"`` (to English).
            timestamps: let the model write timestamp tokens (no ``<|notimestamps|>``).
            previous_text: text to condition on (OpenAI's ``prompt``), behind
                ``<|startofprev|>``; its last ``max_previous_tokens`` tokens are kept.

        Raises:
            ValueError: an unknown language or task.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        ids = []
        if previous_text and previous_text.strip():
            if self.start_of_prev is None:
                raise ValueError("this model's tokenizer has no <|startofprev|> token for prompts")
            text_ids = self.tokenizer.encode(" " + previous_text.strip(), add_special_tokens=False)
            ids += [int(self.start_of_prev)] + list(text_ids)[-max_previous_tokens:]
        ids.append(self.start_of_transcript)
        if not self.multilingual:  # English-only: no language or task token
            if language is not None:
                self.language_code(language)
            if task != "transcribe":
                raise ValueError("this English-only model cannot translate")
        else:
            if language is not None:
                ids.append(self.languages[self.language_code(language)])
            ids.append(self.transcribe if task == "transcribe" else self.translate)
        if not timestamps:
            ids.append(self.no_timestamps)
        return ids

    def is_timestamp(self, token_id: int) -> bool:
        return token_id >= self.timestamp_begin

    def text(self, token_ids: list[int]) -> str:
        """The text of generated tokens, special and timestamp tokens left out."""
        words = [t for t in token_ids if t < self.timestamp_begin]
        return self.tokenizer.decode(words, skip_special_tokens=True)

    def segments(self, token_ids: list[int], duration: float) -> list[Segment]:
        """Split generated tokens at timestamp tokens into timed segments.

        Text without timestamps around it becomes one segment spanning ``[0, duration]``
        (a model asked for timestamps may still write none).
        """
        segments: list[Segment] = []
        start, words = None, []
        for i, t in enumerate(token_ids):
            if not self.is_timestamp(t):
                if t != self.end_of_text:
                    words.append(i)
                continue
            time = min((t - self.timestamp_begin) * TIME_PRECISION, duration)
            if start is None or not words:
                start = time
                continue
            segments.append(Segment(start, max(time, start), [token_ids[j] for j in words], words))
            start, words = None, []
        if words:
            first = start if start is not None else 0.0
            segments.append(Segment(first, duration, [token_ids[j] for j in words], words))
        return segments
