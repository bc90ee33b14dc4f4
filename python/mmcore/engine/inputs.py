"""Turns user prompts (vLLM's prompt schema) into expanded token ids and multimodal items.

A prompt is a string, ``{"prompt": str, "multi_modal_data": {...}}`` or
``{"prompt_token_ids": [...], "multi_modal_data": {...}}``; ``multi_modal_data`` maps a
modality to one item or a list. An item is media (PIL image, numpy HWC uint8, torch CHW, bytes,
data URL, allowed local path), ``{"image_embeds": tensor}`` (skips the encoder), or
``{"pixel_values": ..., ...}`` already processed. ``multi_modal_uuids`` (same shape) or a
``"uuid"`` key in a dict item names an item instead of its content hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmcore import _core
from mmcore.engine.request_checks import prompt_token_array
from mmcore.multimodal.hashing import hash_item
from mmcore.multimodal.media import load_image
from mmcore.multimodal.processor_cache import ProcessorCache

_MODALITIES = {
    "image": _core.Modality.IMAGE,
    "video": _core.Modality.VIDEO,
    "audio": _core.Modality.AUDIO,
}


@dataclass
class MMItem:
    """One multimodal item of a prompt, ready for the encoder (or already encoded)."""

    modality: str
    identifier: str
    num_embeds: int
    data: dict[str, torch.Tensor] | None = None  # processor output, for the encoder
    embeds: torch.Tensor | None = None  # user-given projected embeddings


@dataclass
class ProcessedPrompt:
    """A prompt after tokenization, media processing and placeholder expansion."""

    prompt: str | None
    token_ids: np.ndarray
    features: list = field(default_factory=list)  # _core.MMFeature, sorted by offset
    items: list[MMItem] = field(default_factory=list)  # same order as features


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class InputProcessor:
    """Validates and processes prompts for one model.

    Args:
        processor: the model's ``MultiModalProcessor``.
        tokenizer: the checkpoint's tokenizer.
        model_id: folded into content hashes so two models never share cache entries.
        max_model_len: longest prompt + output in tokens.
        limit_mm_per_prompt: most items per modality in one prompt.
        mm_processor_kwargs: passed to the processor and folded into hashes.
        cache: processor output cache, shared across prompts.
        allowed_local_media_path: folder local image paths must lie in (None: no local files).
        max_image_pixels: larger images are refused before decoding.
    """

    def __init__(
        self,
        processor,
        tokenizer,
        *,
        model_id: str,
        max_model_len: int,
        limit_mm_per_prompt: dict[str, int] | None,
        mm_processor_kwargs: dict | None,
        cache: ProcessorCache,
        allowed_local_media_path: str | None = None,
        max_image_pixels: int = 64_000_000,
    ) -> None:
        self.processor = processor
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_model_len = max_model_len
        self.limit_mm_per_prompt = dict(limit_mm_per_prompt or {})
        self.mm_processor_kwargs = dict(mm_processor_kwargs or {})
        self.cache = cache
        self.allowed_local_media_path = allowed_local_media_path
        self.max_image_pixels = max_image_pixels
        self._allowed = [_MODALITIES[m] for m in processor.supported_modalities]
        # Names the placeholders in error messages, and finds placeholders without items.
        self._placeholder_tokens = [
            _core.PlaceholderToken(
                processor.placeholder_token_id(m), _MODALITIES[m], processor.placeholder_text(m)
            )
            for m in processor.supported_modalities
        ]

    def process(self, prompt: Any) -> ProcessedPrompt:
        """Process one prompt; raise ValueError naming what is wrong with it."""
        text, token_ids, mm_data, uuids = self._split_prompt(prompt)
        if token_ids is None:
            token_ids = self.tokenizer(text)["input_ids"]
        ids = prompt_token_array(token_ids, len(self.tokenizer))

        items: list[MMItem] = []
        for modality, raw in mm_data.items():
            items.extend(self._process_modality(modality, _as_list(raw), uuids.get(modality)))
        placeholder_items = [
            self.processor.placeholder_item(it.modality, it.identifier, it.num_embeds)
            for it in items
        ]
        expanded = _core.expand_placeholders(
            ids, placeholder_items, self._allowed, self.max_model_len, self._placeholder_tokens
        )
        return ProcessedPrompt(
            prompt=text,
            token_ids=np.asarray(expanded.token_ids, dtype=np.int32),
            features=list(expanded.features),
            items=_order_like_features(items, expanded.features),
        )

    def _split_prompt(self, prompt: Any):
        if isinstance(prompt, str):
            return prompt, None, {}, {}
        if not isinstance(prompt, dict):
            raise ValueError(f"a prompt must be a string or a dict, got {type(prompt).__name__}")
        unknown = set(prompt) - {
            "prompt",
            "prompt_token_ids",
            "multi_modal_data",
            "multi_modal_uuids",
        }
        if unknown:
            raise ValueError(f"unknown prompt fields: {sorted(unknown)}")
        text, token_ids = prompt.get("prompt"), prompt.get("prompt_token_ids")
        if (text is None) == (token_ids is None):
            raise ValueError("a prompt dict needs exactly one of 'prompt' and 'prompt_token_ids'")
        mm_data = prompt.get("multi_modal_data") or {}
        uuids = prompt.get("multi_modal_uuids") or {}
        if not isinstance(mm_data, dict):
            raise ValueError("multi_modal_data must be a dict of modality -> item(s)")
        return text, token_ids, mm_data, uuids

    def _process_modality(self, modality: str, raw_items: list, uuids) -> list[MMItem]:
        if modality not in _MODALITIES:
            raise ValueError(
                f"unknown modality {modality!r}; expected one of {sorted(_MODALITIES)}"
            )
        if modality not in self.processor.supported_modalities:
            raise ValueError(f"this model does not accept {modality} input")
        limit = self.limit_mm_per_prompt.get(modality)
        if limit is not None and len(raw_items) > limit:
            raise ValueError(
                f"prompt has {len(raw_items)} {modality} items, more than limit_mm_per_prompt "
                f"allows ({limit})"
            )
        uuid_list = _as_list(uuids) if uuids is not None else [None] * len(raw_items)
        if len(uuid_list) != len(raw_items):
            raise ValueError(
                f"multi_modal_uuids has {len(uuid_list)} {modality} entries for {len(raw_items)} items"
            )

        items: list[MMItem | None] = [None] * len(raw_items)
        to_process: list[tuple[int, Any, str]] = []
        for i, (raw, uuid) in enumerate(zip(raw_items, uuid_list)):
            if isinstance(raw, dict) and "uuid" in raw:
                uuid = raw["uuid"]
                raw = raw.get("data", {k: v for k, v in raw.items() if k != "uuid"})
            if isinstance(raw, dict) and "image_embeds" in raw:
                items[i] = self._embeds_item(modality, raw["image_embeds"], uuid)
            elif isinstance(raw, dict) and "pixel_values" in raw:
                items[i] = self._preprocessed_item(modality, raw, uuid)
            else:
                media = load_image(
                    raw,
                    allowed_local_media_path=self.allowed_local_media_path,
                    max_pixels=self.max_image_pixels,
                )
                identifier = uuid or hash_item(
                    media, model=self.model_id, **self.mm_processor_kwargs
                )
                to_process.append((i, media, identifier))

        misses = []
        for i, media, identifier in to_process:
            cached = self.cache.get(identifier)
            if cached is None:
                misses.append((i, media, identifier))
            else:
                items[i] = MMItem(
                    modality, identifier, self.processor.num_embeds(modality, media), data=cached
                )
        if misses:
            outputs = self.processor.process(modality, [m for _, m, _ in misses])
            for (i, media, identifier), data in zip(misses, outputs):
                self.cache.put(identifier, data)
                items[i] = MMItem(
                    modality, identifier, self.processor.num_embeds(modality, media), data=data
                )
        return [it for it in items if it is not None]

    def _embeds_item(self, modality: str, embeds, uuid) -> MMItem:
        if not isinstance(embeds, torch.Tensor):
            raise ValueError(
                "image_embeds must be a torch.Tensor of shape [num_embeds, hidden_size]"
            )
        hidden = self.processor.embeds_hidden_size
        if embeds.ndim != 2 or embeds.shape[1] != hidden or embeds.shape[0] == 0:
            raise ValueError(
                f"image_embeds must have shape [num_embeds, {hidden}], got {list(embeds.shape)}"
            )
        identifier = uuid or hash_item(embeds, model=self.model_id, kind="embeds")
        return MMItem(modality, identifier, int(embeds.shape[0]), embeds=embeds)

    def _preprocessed_item(self, modality: str, data: dict, uuid) -> MMItem:
        tensors = {k: torch.as_tensor(v) for k, v in data.items()}
        num_embeds = self.processor.num_embeds_processed(modality, tensors)
        identifier = uuid or hash_item(
            tensors["pixel_values"], model=self.model_id, kind="processed"
        )
        return MMItem(modality, identifier, num_embeds, data=tensors)


def _order_like_features(items: list[MMItem], features) -> list[MMItem]:
    """Items of each modality match that modality's features in prompt order."""
    by_modality: dict[str, list[MMItem]] = {}
    for it in items:
        by_modality.setdefault(it.modality, []).append(it)
    ordered = []
    for feature in features:
        name = _core.modality_name(feature.modality)
        ordered.append(by_modality[name].pop(0))
    return ordered
