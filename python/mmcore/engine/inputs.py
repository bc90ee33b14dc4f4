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
from mmcore.multimodal.media_budget import (
    MediaBudget,
    PeekedImage,
    check_request_pixels,
    peek_image,
)
from mmcore.multimodal.media_processes import MediaProcessPool
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


@dataclass
class _PlannedItem:
    """One item after the checks that need no decoding."""

    source: Any  # what to decode (bytes already read, or the caller's object)
    uuid: str | None
    num_embeds: int | None  # None: known only after processing (non-image media)
    peeked: PeekedImage | None = None
    item: MMItem | None = None  # already final (user-given embeddings or pixel values)


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
        budget: the request's pixel budget (default: ``max_image_pixels`` per image and
            ``DEFAULT_MAX_REQUEST_PIXELS`` in all).
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
        budget: MediaBudget | None = None,
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
        self.budget = budget or MediaBudget(max_image_pixels=max_image_pixels)
        # Worker processes for image decoding and processing (None: in the calling thread).
        self.media_pool: MediaProcessPool | None = None
        self._allowed = [_MODALITIES[m] for m in processor.supported_modalities]
        # Names the placeholders in error messages, and finds placeholders without items.
        self._placeholder_tokens = [
            _core.PlaceholderToken(
                processor.placeholder_token_id(m), _MODALITIES[m], processor.placeholder_text(m)
            )
            for m in processor.supported_modalities
        ]

    def process(self, prompt: Any) -> ProcessedPrompt:
        """Process one prompt; raise ValueError naming what is wrong with it.

        Media is decoded last: image sizes (from headers), the request's pixel budget and
        whether the expanded prompt fits ``max_model_len`` are checked first.
        """
        text, token_ids, mm_data, uuids = self._split_prompt(prompt)
        if token_ids is None:
            token_ids = self.tokenizer(text)["input_ids"]
        ids = prompt_token_array(token_ids, len(self.tokenizer))

        plans = {
            modality: self._plan_modality(modality, _as_list(raw), uuids.get(modality))
            for modality, raw in mm_data.items()
        }
        check_request_pixels(
            [p.peeked for plan in plans.values() for p in plan if p.peeked is not None],
            self.budget,
        )
        self._check_fits(ids, plans)
        items: list[MMItem] = []
        for modality, plan in plans.items():
            items.extend(self._process_modality(modality, plan))
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

    def _check_fits(self, ids: np.ndarray, plans: dict[str, list[_PlannedItem]]) -> None:
        """Refuse, before any decoding, a prompt whose expansion cannot fit max_model_len."""
        length = len(ids)
        for modality, plan in plans.items():
            counts = [p.num_embeds for p in plan]
            if not plan or any(c is None for c in counts):
                continue
            token_id = self.processor.placeholder_token_id(modality)
            num_placeholders = int(np.count_nonzero(ids == token_id))
            if num_placeholders == len(plan):  # one placeholder per item: each expands
                length += sum(counts) - num_placeholders
        if length > self.max_model_len:
            raise ValueError(
                f"the prompt would be {length} tokens with its media expanded, more than "
                f"max_model_len={self.max_model_len} (refused before decoding)"
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

    def _plan_modality(self, modality: str, raw_items: list, uuids) -> list[_PlannedItem]:
        """Check one modality's items without decoding: count, uuids, image sizes."""
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
        plan = []
        for raw, uuid in zip(raw_items, uuid_list):
            if isinstance(raw, dict) and "uuid" in raw:
                uuid = raw["uuid"]
                raw = raw.get("data", {k: v for k, v in raw.items() if k != "uuid"})
            if isinstance(raw, dict) and "image_embeds" in raw:
                item = self._embeds_item(modality, raw["image_embeds"], uuid)
                plan.append(_PlannedItem(raw, uuid, item.num_embeds, item=item))
            elif isinstance(raw, dict) and "pixel_values" in raw:
                item = self._preprocessed_item(modality, raw, uuid)
                plan.append(_PlannedItem(raw, uuid, item.num_embeds, item=item))
            elif modality == "image":
                peeked = peek_image(raw, self.budget, self.allowed_local_media_path)
                num_embeds = self.processor.num_embeds(modality, peeked.header)
                plan.append(_PlannedItem(peeked.source, uuid, num_embeds, peeked=peeked))
            else:
                plan.append(_PlannedItem(raw, uuid, None))
        return plan

    def _process_modality(self, modality: str, plan: list[_PlannedItem]) -> list[MMItem]:
        """Decode and process one modality's planned items (processor cache first)."""
        items: list[MMItem | None] = [p.item for p in plan]
        if self.media_pool is not None and modality == "image":
            return self._process_in_pool(modality, plan, items)
        to_process: list[tuple[int, Any, str]] = []
        for i, p in enumerate(plan):
            if p.item is not None:
                continue
            media = load_image(
                p.source,
                allowed_local_media_path=self.allowed_local_media_path,
                max_pixels=self.max_image_pixels,
            )
            identifier = p.uuid or hash_item(media, model=self.model_id, **self.mm_processor_kwargs)
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

    def _process_in_pool(
        self, modality: str, plan: list[_PlannedItem], items: list[MMItem | None]
    ) -> list[MMItem]:
        """Decode and process in the worker processes (items named by a uuid and already in
        the processor cache are not sent)."""
        pending = []
        for i, p in enumerate(plan):
            if p.item is not None:
                continue
            cached = self.cache.get(p.uuid) if p.uuid else None
            if cached is not None:
                items[i] = MMItem(modality, p.uuid, p.num_embeds, data=cached)
            else:
                pending.append(i)
        results = self.media_pool.process_images([plan[i].source for i in pending])
        for i, (identifier, num_embeds, data) in zip(pending, results):
            identifier = plan[i].uuid or identifier
            self.cache.put(identifier, data)
            items[i] = MMItem(modality, identifier, num_embeds, data=data)
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
