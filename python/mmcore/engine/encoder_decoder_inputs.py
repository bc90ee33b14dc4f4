"""Prompt forms of encoder-decoder models (Whisper), as vLLM takes them.

Either the explicit form::

    {"encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (wav, sr)}},
     "decoder_prompt": "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>"}

(``decoder_prompt`` may also be ``{"prompt": str}`` or ``{"prompt_token_ids": [...]}``, or be
left out for the model's default), or the implicit one, where the prompt is the decoder prompt
and ``multi_modal_data`` the encoder input::

    {"prompt": "<|startoftranscript|>...", "multi_modal_data": {"audio": (wav, sr)}}

The decoder prompt is tokenized without added special tokens (it spells them itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ENCODER_KEYS = {"prompt", "multi_modal_data", "multi_modal_uuids", "mm_processor_kwargs"}
_DECODER_KEYS = {"prompt", "prompt_token_ids"}
_IMPLICIT_KEYS = _ENCODER_KEYS | {"prompt_token_ids"}


@dataclass
class EncoderInput:
    """The encoder input of an encoder-decoder request, as the core reads it (MMFeature's
    attributes; offset and length are unused: it has no place in the decoder prompt)."""

    modality: Any
    identifier: str
    num_embeds: int
    offset: int = 0
    length: int = 0
    embed_mask: Any = None


@dataclass
class EncoderDecoderPrompt:
    """A parsed encoder-decoder prompt.

    Attributes:
        decoder_text: the decoder prompt as text (None when given as ids or left out).
        decoder_token_ids: the decoder prompt as ids (None when given as text or left out).
        encoder_item: the one encoder input item (raw: array, (array, sr), bytes, path, ...).
        uuid: the item's user-given identifier, if any.
        mm_processor_kwargs: per-prompt processor settings.
    """

    decoder_text: str | None
    decoder_token_ids: list[int] | None
    encoder_item: Any
    uuid: str | None
    mm_processor_kwargs: dict | None


def _refuse_unknown(fields: dict, known: set[str], where: str) -> None:
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f"unknown {where} fields: {sorted(unknown)}")


def _one_item(mm_data: Any, uuids: Any, modality: str) -> tuple[Any, str | None]:
    if not isinstance(mm_data, dict) or set(mm_data) != {modality}:
        raise ValueError(
            f"an encoder-decoder prompt needs multi_modal_data with exactly one {modality!r} "
            f"entry, got {sorted(mm_data) if isinstance(mm_data, dict) else type(mm_data).__name__}"
        )
    item = mm_data[modality]
    if isinstance(item, list):
        if len(item) != 1:
            raise ValueError(
                f"an encoder-decoder prompt takes one {modality} item, got {len(item)}"
            )
        item = item[0]
    uuid = (uuids or {}).get(modality) if isinstance(uuids, dict) else None
    if isinstance(uuid, list):
        uuid = uuid[0] if uuid else None
    return item, uuid


def split_encoder_decoder_prompt(prompt: Any, modality: str = "audio") -> EncoderDecoderPrompt:
    """Parse either prompt form; ValueError naming what is wrong."""
    if not isinstance(prompt, dict):
        raise ValueError(
            f"this encoder-decoder model needs {modality} input: pass "
            '{"encoder_prompt": {"prompt": "", "multi_modal_data": {"' + modality + '": ...}}, '
            '"decoder_prompt": ...} (or use Engine.transcribe)'
        )
    if "encoder_prompt" in prompt:
        _refuse_unknown(prompt, {"encoder_prompt", "decoder_prompt"}, "prompt")
        encoder = prompt["encoder_prompt"]
        if not isinstance(encoder, dict):
            raise ValueError("encoder_prompt must be a dict with multi_modal_data")
        _refuse_unknown(encoder, _ENCODER_KEYS, "encoder_prompt")
        if encoder.get("prompt"):
            raise ValueError("the encoder prompt of this model takes no text: use prompt ''")
        decoder = prompt.get("decoder_prompt")
        text = ids = None
        if isinstance(decoder, str):
            text = decoder
        elif isinstance(decoder, dict):
            _refuse_unknown(decoder, _DECODER_KEYS, "decoder_prompt")
            text, ids = decoder.get("prompt"), decoder.get("prompt_token_ids")
            if (text is None) == (ids is None):
                raise ValueError("decoder_prompt needs exactly one of 'prompt', 'prompt_token_ids'")
        elif decoder is not None:
            raise ValueError("decoder_prompt must be a string or a dict")
        source = encoder
    else:
        _refuse_unknown(prompt, _IMPLICIT_KEYS, "prompt")
        text, ids = prompt.get("prompt"), prompt.get("prompt_token_ids")
        if text is not None and ids is not None:
            raise ValueError("a prompt dict takes 'prompt' or 'prompt_token_ids', not both")
        source = prompt
    item, uuid = _one_item(
        source.get("multi_modal_data") or {}, source.get("multi_modal_uuids"), modality
    )
    if text is not None and not isinstance(text, str):
        raise ValueError("the decoder prompt must be a string")
    return EncoderDecoderPrompt(
        decoder_text=text or None,
        decoder_token_ids=None if ids is None else list(ids),
        encoder_item=item,
        uuid=uuid,
        mm_processor_kwargs=source.get("mm_processor_kwargs"),
    )
