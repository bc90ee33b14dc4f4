"""Turns user prompts (vLLM's prompt schema) into expanded token ids and multimodal items.

A prompt is a string, ``{"prompt": str, "multi_modal_data": {...}}`` or
``{"prompt_token_ids": [...], "multi_modal_data": {...}}``; ``multi_modal_data`` maps a
modality to one item or a list. An item is media (PIL image, numpy HWC uint8, torch CHW, bytes,
data URL, allowed local path), ``{"image_embeds": tensor}`` (skips the encoder), or
``{"pixel_values": ..., ...}`` already processed. ``multi_modal_uuids`` (same shape) or a
``"uuid"`` key in a dict item names an item instead of its content hash. A prompt dict may carry
``mm_processor_kwargs``: settings of the model's processor for this prompt only (unknown keys are
refused). Each raw item is loaded by the processor's loader for its modality
(``MultiModalProcessor.load_media``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmcore import _core
from mmcore.engine.encoder_decoder_inputs import EncoderInput, split_encoder_decoder_prompt
from mmcore.engine.request_checks import prompt_token_array
from mmcore.models.interfaces import supports_encoder_decoder
from mmcore.multimodal.hashing import hash_item, hash_kwargs
from mmcore.multimodal.media_budget import (
    MediaBudget,
    PeekedImage,
    check_request_pixels,
    peek_image,
)
from mmcore.multimodal.media_processes import MediaProcessPool
from mmcore.multimodal.processor import MediaOptions, MRopePositions, MultiModalProcessor
from mmcore.multimodal.processor_cache import ProcessorCache
from mmcore.multimodal.video import VideoClip

_MODALITIES = {
    "image": _core.Modality.IMAGE,
    "video": _core.Modality.VIDEO,
    "audio": _core.Modality.AUDIO,
}


# Keys that mark a dict item as already processed (images; Qwen2-VL videos).
_PROCESSED_KEYS = {"pixel_values", "pixel_values_videos"}


@dataclass
class MMItem:
    """One multimodal item of a prompt, ready for the encoder (or already encoded)."""

    modality: str
    identifier: str
    num_embeds: int
    data: dict[str, torch.Tensor] | None = None  # processor output, for the encoder
    embeds: torch.Tensor | None = None  # user-given projected embeddings
    offset: int = -1  # first placeholder token in the expanded prompt (set after expansion)
    layout: Any = None  # the processor's item_layout: replacement tokens + embedding mask


@dataclass
class ProcessedPrompt:
    """A prompt after tokenization, media processing and placeholder expansion."""

    prompt: str | None
    token_ids: np.ndarray
    features: list = field(default_factory=list)  # _core.MMFeature, sorted by offset
    items: list[MMItem] = field(default_factory=list)  # same order as features
    mrope: MRopePositions | None = None  # 3-row positions, for M-RoPE models
    # Encoder-decoder models: the encoder input (duck-typed MMFeature: modality, identifier,
    # num_embeds = encoder positions); its item is items[0]. None for decoder-only models.
    encoder_input: Any = None


@dataclass
class _PlannedItem:
    """One item after the checks that need no decoding of images."""

    source: Any  # what to load (image bytes already read, the caller's object, loaded media)
    uuid: str | None
    num_embeds: int | None  # None: known only after loading
    peeked: PeekedImage | None = None
    item: MMItem | None = None  # already final (user-given embeddings or pixel values)
    loaded: bool = False  # ``source`` is already the loaded media (videos, audio)


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
        mm_processor_kwargs: the engine-wide settings (the processor holds the checked copy that
            each prompt's settings start from and that hashes fold in).
        cache: processor output cache, shared across prompts.
        allowed_local_media_path: folder local media paths must lie in (None: no local files).
        allowed_media_domains: hosts media URLs may be fetched from (empty: any public host;
            see ``mmcore.multimodal.url_fetch``).
        max_image_pixels: larger images (and video frames) are refused before decoding.
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
        allowed_media_domains: list[str] | None = None,
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
        self.media_options = MediaOptions(
            allowed_local_media_path=allowed_local_media_path,
            allowed_domains=tuple(allowed_media_domains or ()),
            max_image_pixels=max_image_pixels,
        )
        self.budget = budget or MediaBudget(max_image_pixels=max_image_pixels)
        # Worker processes for image decoding and processing (None: in the calling thread).
        self.media_pool: MediaProcessPool | None = None
        self._allowed = [_MODALITIES[m] for m in processor.supported_modalities]
        self.encoder_decoder = supports_encoder_decoder(processor)
        # Names the placeholders in error messages, and finds placeholders without items
        # (encoder-decoder prompts have none: the media is the encoder input).
        self._placeholder_tokens = [
            _core.PlaceholderToken(
                processor.placeholder_token_id(m), _MODALITIES[m], processor.placeholder_text(m)
            )
            for m in ([] if self.encoder_decoder else processor.supported_modalities)
        ]

    def process(self, prompt: Any) -> ProcessedPrompt:
        """Process one prompt; raise ValueError naming what is wrong with it.

        Images are decoded last: their sizes (from headers), the request's pixel budget and
        whether the expanded prompt fits ``max_model_len`` are checked first. Prompts of
        encoder-decoder models (Whisper) take the forms of
        :func:`mmcore.engine.encoder_decoder_inputs.process_encoder_decoder`.
        """
        if self.encoder_decoder:
            return self._process_encoder_decoder(prompt)
        text, token_ids, mm_data, uuids, request_kwargs = self._split_prompt(prompt)
        settings = self.processor.settings(request_kwargs)
        if token_ids is None:
            token_ids = self.tokenizer(text)["input_ids"]
        ids = prompt_token_array(token_ids, len(self.tokenizer))

        plans = {
            modality: self._plan_modality(modality, _as_list(raw), uuids.get(modality), settings)
            for modality, raw in mm_data.items()
        }
        check_request_pixels(
            [p.peeked for plan in plans.values() for p in plan if p.peeked is not None],
            self.budget,
        )
        self._check_fits(ids, plans)
        items: list[MMItem] = []
        for modality, plan in plans.items():
            items.extend(self._process_modality(modality, plan, settings))
        placeholder_items = [
            self.processor.placeholder_item(it.modality, it.identifier, it.num_embeds, it.layout)
            for it in items
        ]
        expanded = _core.expand_placeholders(
            ids, placeholder_items, self._allowed, self.max_model_len, self._placeholder_tokens
        )
        expanded_ids, features = self.processor.join_item_boundaries(
            np.asarray(expanded.token_ids, dtype=np.int32), list(expanded.features)
        )
        ordered = _order_like_features(items, features)
        return ProcessedPrompt(
            prompt=text,
            token_ids=expanded_ids,
            features=features,
            items=ordered,
            mrope=self.processor.mrope_positions(expanded_ids, ordered),
        )

    def _process_encoder_decoder(self, prompt: Any) -> ProcessedPrompt:
        """A decoder prompt and its one encoder input (cached and hashed like any item)."""
        modality = self.processor.supported_modalities[0]
        parsed = split_encoder_decoder_prompt(prompt, modality)
        settings = self.processor.settings(parsed.mm_processor_kwargs)
        if parsed.decoder_token_ids is not None:
            token_ids = parsed.decoder_token_ids
        elif parsed.decoder_text is not None:
            token_ids = self.tokenizer(parsed.decoder_text, add_special_tokens=False)["input_ids"]
        else:
            token_ids = self.processor.default_decoder_prompt()
        ids = prompt_token_array(token_ids, len(self.tokenizer))
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"the decoder prompt is {len(ids)} tokens, which leaves no room to generate "
                f"within max_model_len={self.max_model_len}"
            )
        plan = self._plan_modality(modality, [parsed.encoder_item], [parsed.uuid], settings)
        (item,) = self._process_modality(modality, plan, settings)
        encoder_input = EncoderInput(_MODALITIES[modality], item.identifier, item.num_embeds)
        return ProcessedPrompt(
            prompt=parsed.decoder_text,
            token_ids=ids,
            items=[item],
            encoder_input=encoder_input,
        )

    @property
    def max_image_pixels(self) -> int:
        """Largest image (and video frame) in pixels, refused before decoding above it."""
        return self.media_options.max_image_pixels

    @property
    def allowed_local_media_path(self) -> str | None:
        """Folder local media paths must lie in (None: no local files)."""
        return self.media_options.allowed_local_media_path

    def _check_fits(self, ids: np.ndarray, plans: dict[str, list[_PlannedItem]]) -> None:
        """Refuse, before any image decoding, a prompt whose expansion cannot fit."""
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
                f"the prompt is longer than the maximum prompt length: {length} tokens with its "
                f"media expanded, more than max_model_len={self.max_model_len} (refused before "
                "decoding)"
            )

    def _split_prompt(self, prompt: Any):
        if isinstance(prompt, str):
            return prompt, None, {}, {}, None
        if not isinstance(prompt, dict):
            raise ValueError(f"a prompt must be a string or a dict, got {type(prompt).__name__}")
        unknown = set(prompt) - {
            "prompt",
            "prompt_token_ids",
            "multi_modal_data",
            "multi_modal_uuids",
            "mm_processor_kwargs",
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
        return text, token_ids, mm_data, uuids, prompt.get("mm_processor_kwargs")

    def _plan_modality(
        self, modality: str, raw_items: list, uuids, settings: dict
    ) -> list[_PlannedItem]:
        """Check one modality's items: count, uuids, sizes (images from their headers only;
        videos and audio clips are loaded here, their length decides their size)."""
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
        # A user-named item processed with other settings is another item (another cache entry).
        own_settings = settings != self.processor.mm_processor_kwargs
        suffix = f"#{hash_kwargs(settings)}" if own_settings else ""
        plan = []
        for raw, uuid in zip(raw_items, uuid_list):
            if isinstance(raw, dict) and "uuid" in raw:
                uuid = raw["uuid"]
                raw = raw.get("data", {k: v for k, v in raw.items() if k != "uuid"})
            if uuid:
                uuid = f"{uuid}{suffix}"
            if isinstance(raw, dict) and "image_embeds" in raw:
                item = self._embeds_item(modality, raw, uuid)
                plan.append(_PlannedItem(raw, uuid, item.num_embeds, item=item))
            elif isinstance(raw, dict) and set(raw) & _PROCESSED_KEYS:
                item = self._preprocessed_item(modality, raw, uuid)
                plan.append(_PlannedItem(raw, uuid, item.num_embeds, item=item))
            elif modality == "image":
                peeked = peek_image(
                    raw,
                    self.budget,
                    self.media_options.allowed_local_media_path,
                    self.media_options.allowed_domains,
                )
                num_embeds = self.processor.num_embeds(modality, peeked.header, settings)
                plan.append(_PlannedItem(peeked.source, uuid, num_embeds, peeked=peeked))
            else:
                media = self.processor.load_media(modality, raw, self.media_options, settings)
                num_embeds = self.processor.num_embeds(modality, media, settings)
                plan.append(_PlannedItem(media, uuid, num_embeds, loaded=True))
        return plan

    def _uses_pool(self, modality: str, settings: dict) -> bool:
        """Images go to the worker processes when the processor's engine-wide settings apply
        and items need no per-item token layout."""
        return (
            self.media_pool is not None
            and modality == "image"
            and settings == self.processor.mm_processor_kwargs
            and type(self.processor).item_layout is MultiModalProcessor.item_layout
        )

    def _process_modality(
        self, modality: str, plan: list[_PlannedItem], settings: dict
    ) -> list[MMItem]:
        """Load (decode) and process one modality's planned items, processor cache first."""
        items: list[MMItem | None] = [p.item for p in plan]
        if self._uses_pool(modality, settings):
            return self._process_in_pool(modality, plan, items)
        to_process: list[tuple[int, Any, str]] = []
        for i, p in enumerate(plan):
            if p.item is not None:
                continue
            media = (
                p.source
                if p.loaded
                else self.processor.load_media(modality, p.source, self.media_options, settings)
            )
            identifier = p.uuid or hash_item(_hash_content(media), model=self.model_id, **settings)
            to_process.append((i, media, identifier))

        misses = []
        for i, media, identifier in to_process:
            cached = self.cache.get(identifier)
            if cached is None:
                misses.append((i, media, identifier))
            else:
                num_embeds = self.processor.num_embeds(modality, media, settings)
                layout = self.processor.item_layout(modality, media, settings)
                items[i] = MMItem(modality, identifier, num_embeds, data=cached, layout=layout)
        if misses:
            counts = [self.processor.num_embeds(modality, m, settings) for _, m, _ in misses]
            outputs = self.processor.process(modality, [m for _, m, _ in misses], settings)
            for (i, media, identifier), num_embeds, data in zip(misses, counts, outputs):
                self.cache.put(identifier, data)
                layout = self.processor.item_layout(modality, media, settings)
                items[i] = MMItem(modality, identifier, num_embeds, data=data, layout=layout)
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

    def _embeds_item(self, modality: str, raw: dict, uuid) -> MMItem:
        """Precomputed embeddings; other keys (e.g. Qwen2-VL's ``image_grid_thw``, which
        M-RoPE needs) are kept as the item's data."""
        embeds = raw["image_embeds"]
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
        extra = {k: torch.as_tensor(v) for k, v in raw.items() if k != "image_embeds"}
        layout = self.processor.processed_item_layout(modality, {**extra, "image_embeds": embeds})
        return MMItem(
            modality, identifier, int(embeds.shape[0]), data=extra, embeds=embeds, layout=layout
        )

    def _preprocessed_item(self, modality: str, data: dict, uuid) -> MMItem:
        tensors = {k: torch.as_tensor(v) for k, v in data.items()}
        num_embeds = self.processor.num_embeds_processed(modality, tensors)
        identifier = uuid or hash_item(tensors, model=self.model_id, kind="processed")
        layout = self.processor.processed_item_layout(modality, tensors)
        return MMItem(modality, identifier, num_embeds, data=tensors, layout=layout)


def _hash_content(media):
    """What identifies a loaded item's content (a clip: its frames and their rate)."""
    if isinstance(media, VideoClip):
        return (media.frames, float(media.fps or 0.0))
    return media


def _order_like_features(items: list[MMItem], features) -> list[MMItem]:
    """Items of each modality match that modality's features in prompt order; each item
    takes its feature's offset."""
    by_modality: dict[str, list[MMItem]] = {}
    for it in items:
        by_modality.setdefault(it.modality, []).append(it)
    ordered = []
    for feature in features:
        name = _core.modality_name(feature.modality)
        item = by_modality[name].pop(0)
        item.offset = int(feature.offset)
        ordered.append(item)
    return ordered
