"""Text a user typed stays text: no media placeholders, no control tokens.

Two attacks are closed here:
- placeholders made of text: ``"<im"`` + ``"age>"`` in adjacent text parts, joined by the chat
  template into a real ``<image>``. The rendered prompt must hold exactly one placeholder per
  media part, wherever the template joined text.
- control tokens typed by a user (``</s>``, ``<s>``, ``<|im_end|>``) forging turn boundaries.
  When any message text could form a special token, the prompt is tokenized piece by piece:
  the template's own text with special tokens, each user text with special tokens split as plain
  text (HF tokenizers' ``split_special_tokens``). Prompts without such text are tokenized whole,
  exactly as the HF processor does.
"""

from __future__ import annotations

import copy
import re
import threading
from typing import Any

_plain_copies: dict[int, tuple[Any, Any]] = {}
_plain_lock = threading.Lock()

_MARKER = "\x00mmcore-text-{}\x00"
_MARKER_RE = re.compile("\x00mmcore-text-(\\d+)\x00")


def plain_text_tokenizer(tokenizer):
    """A private copy of ``tokenizer`` that always tokenizes special token strings as text.

    HF fast tokenizers implement ``split_special_tokens=True`` by flipping a flag on the shared
    Rust tokenizer for the call, which races with other threads tokenizing at the same time
    (their ``<image>`` would become plain text); the copy never shares that flag.
    """
    with _plain_lock:
        entry = _plain_copies.get(id(tokenizer))
        if entry is None or entry[0] is not tokenizer:
            plain = copy.deepcopy(tokenizer)
            plain.split_special_tokens = True
            entry = (tokenizer, plain)
            _plain_copies[id(tokenizer)] = entry
        return entry[1]


def special_token_strings(tokenizer) -> list[str]:
    """Every string the tokenizer turns into a special (control) token."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials.update(str(tok) for tok in decoder.values() if getattr(tok, "special", False))
    return sorted(s for s in specials if s)


def check_placeholder_count(prompt: str, placeholder_text: dict[str, str], media: dict) -> None:
    """Raise ValueError unless the rendered ``prompt`` has one placeholder per media item.

    Args:
        prompt: the chat template's output.
        placeholder_text: modality -> placeholder string (e.g. ``"<image>"``).
        media: modality -> the items of the media parts.
    """
    for modality, placeholder in placeholder_text.items():
        found = prompt.count(placeholder) if placeholder else 0
        expected = len(media.get(modality, []))
        if found != expected:
            raise ValueError(
                f"the rendered prompt has {found} {modality} placeholder(s) {placeholder!r} for "
                f"{expected} {modality} part(s): message text must not form placeholders; "
                f"send {modality}s as content parts"
            )


def message_texts(rendered: list[dict]) -> list[list[str]]:
    """The text of each message: its string content or its text parts, in order."""
    texts = []
    for message in rendered:
        content = message["content"]
        if isinstance(content, str):
            texts.append([content])
        else:
            texts.append([p["text"] for p in content if p["type"] == "text"])
    return texts


def could_form_special(texts: list[list[str]], specials: list[str]) -> bool:
    """True when a text, or a message's texts joined, contain a special token string."""
    for parts in texts:
        joined = "".join(parts)
        if any(s in joined or any(s in p for p in parts) for s in specials):
            return True
    return False


def with_markers(rendered: list[dict]) -> tuple[list[dict], list[str]]:
    """A copy of the messages with every text replaced by a numbered marker, and the texts."""
    texts: list[str] = []

    def mark(text: str) -> str:
        texts.append(text)
        return _MARKER.format(len(texts) - 1)

    marked = []
    for message in rendered:
        content = message["content"]
        if isinstance(content, str):
            marked.append({**message, "content": mark(content)})
        else:
            parts = [
                {**p, "text": mark(p["text"])} if p["type"] == "text" else dict(p) for p in content
            ]
            marked.append({**message, "content": parts})
    return marked, texts


def tokenize_marked(tokenizer, marked_prompt: str, texts: list[str]) -> list[int]:
    """Token ids of a prompt rendered with markers: template text with special tokens parsed,
    each user text with special tokens split as plain text.

    Raises:
        ValueError: the template did not reproduce every marker once (it rewrote user text).
    """
    pieces = _MARKER_RE.split(marked_prompt)
    seen = [int(i) for i in pieces[1::2]]
    if sorted(seen) != list(range(len(texts))):
        raise ValueError(
            "message text contains special tokens, and this chat template rewrites text so it "
            "cannot be kept apart from them; remove the special tokens from the text"
        )
    ids: list[int] = []
    plain = plain_text_tokenizer(tokenizer)
    for k, piece in enumerate(pieces):
        if k % 2 == 1:
            text = texts[int(piece)]
            if text:
                ids += plain(text, add_special_tokens=False)["input_ids"]
        elif piece:
            ids += tokenizer(piece, add_special_tokens=(k == 0))["input_ids"]
    return ids


def tokenize_plain_text(tokenizer, text: str) -> list[int]:
    """A completion prompt's ids with special token strings kept as text (BOS etc. as usual)."""
    return plain_text_tokenizer(tokenizer)(text)["input_ids"]
