"""Gemma 3 processor: resize to the tower's square, optional pan-and-scan crops, and the
``<start_of_image>`` expansion HF's ``Gemma3Processor`` makes.

Prompts carry one ``<start_of_image>`` per image (the chat template renders image parts so).
The core replaces it with the item's layout, as HF's processor does in text::

    \\n\\n<start_of_image><image_soft_token> x N<end_of_image>\\n\\n

and, with pan-and-scan crops (``do_pan_and_scan``), ``Here is the original image <that>
and here are some crops to help you see better <that> <that> ...`` (one per crop). Embeddings
go to the ``<image_soft_token>`` positions; each run of them is one bidirectional span.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

import numpy as np

from mmcore.multimodal.llava import PIXEL_SETTINGS
from mmcore.multimodal.processor import MultiModalProcessor, image_size

# Per-request keys: pixel values, and whether to add crops (changes the embedding count).
REQUEST_KWARGS = PIXEL_SETTINGS | {"do_pan_and_scan"}
# Crop geometry: engine-wide only (it bounds the largest item, which sizes the encoder budget).
PAN_AND_SCAN_GEOMETRY = frozenset(
    {
        "pan_and_scan_min_crop_size",
        "pan_and_scan_max_num_crops",
        "pan_and_scan_min_ratio_to_activate",
    }
)
_GEOMETRY_DEFAULTS = {
    "pan_and_scan_min_crop_size": 256,
    "pan_and_scan_max_num_crops": 4,
    "pan_and_scan_min_ratio_to_activate": 1.2,
}


class Gemma3MultiModalProcessor(MultiModalProcessor):
    """Images for :class:`mmcore.models.gemma3.Gemma3Model` (items -> ``{"pixel_values":
    [1 + crops, 3, S, S]}``), with HF's Gemma 3 image processor doing the pixel work."""

    supported_modalities = ("image",)
    processor_kwargs = REQUEST_KWARGS
    construction_kwargs = PAN_AND_SCAN_GEOMETRY

    def __init__(self, model_dir, hf_config, tokenizer, mm_processor_kwargs=None):
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        from transformers.models.gemma3.image_processing_pil_gemma3 import (
            Gemma3ImageProcessorPil,
        )

        self.image_processor = Gemma3ImageProcessorPil.from_pretrained(self.model_dir)
        vision = hf_config.vision_config
        self.tile_size = int(vision.image_size)
        size = self.image_processor.size
        height = size.get("height") if isinstance(size, dict) else getattr(size, "height", None)
        if height != self.tile_size:
            raise ValueError(
                f"image processor output {height}px does not match the vision tower's "
                f"{self.tile_size}px"
            )
        self.tokens_per_view = int(hf_config.mm_tokens_per_image)
        self.boi_id = int(hf_config.boi_token_index)
        self.eoi_id = int(hf_config.eoi_token_index)
        self.image_token_id = int(hf_config.image_token_index)
        self.geometry = {
            key: self.mm_processor_kwargs.get(
                key, getattr(self.image_processor, key, None) or _GEOMETRY_DEFAULTS[key]
            )
            for key in PAN_AND_SCAN_GEOMETRY
        }

    # -- tokens ------------------------------------------------------------------------------
    def placeholder_token_id(self, modality: str) -> int:
        self.check_modality(modality)
        return self.boi_id

    @cached_property
    def _view_text(self) -> str:
        tok = self.tokenizer
        soft = tok.convert_ids_to_tokens(self.image_token_id)
        boi, eoi = (tok.convert_ids_to_tokens(i) for i in (self.boi_id, self.eoi_id))
        return f"\n\n{boi}{soft * self.tokens_per_view}{eoi}\n\n"

    def layout_for_crops(self, num_crops: int) -> tuple[list[int], list[int]]:
        """Token ids and embedding mask of an image with ``num_crops`` pan-and-scan crops."""
        text = self._view_text
        if num_crops:
            text = (
                f"Here is the original image {text} and here are some crops to help you see "
                "better " + " ".join([text] * num_crops)
            )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        mask = [int(i == self.image_token_id) for i in ids]
        if sum(mask) != (1 + num_crops) * self.tokens_per_view:
            raise ValueError(
                "the tokenizer splits Gemma 3's image tokens; check its special tokens"
            )
        return ids, mask

    def item_layout(self, modality: str, item: Any, kwargs: Mapping | None = None):
        self.check_modality(modality)
        return self.layout_for_crops(self.num_crops(*image_size(item), kwargs))

    def placeholder_item(self, modality: str, identifier: str, num_embeds: int, layout=None):
        """Precomputed or pre-processed items get the layout their embedding count implies."""
        if layout is None:
            layout = self.layout_for_crops(num_embeds // self.tokens_per_view - 1)
        return super().placeholder_item(modality, identifier, num_embeds, layout)

    @cached_property
    def _newline_runs(self) -> dict[int, int]:
        """Token id -> number of line breaks, for the tokenizer's single-token newline runs."""
        runs = {}
        for count in range(1, 33):
            ids = self.tokenizer("\n" * count, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                runs[ids[0]] = count
        return runs

    def join_item_boundaries(
        self, token_ids: np.ndarray, features: list
    ) -> tuple[np.ndarray, list]:
        """Merge the image layout's leading / trailing ``\n\n`` with a newline run of the prompt
        next to it into the one token HF's text expansion gives (``user\n`` + ``\n\n`` ->
        ``\n\n\n`` with Gemma's tokenizer). Items keep their length; offsets shift."""
        from mmcore import _core

        runs = self._newline_runs
        if not features or len(runs) < 2:
            return token_ids, features
        by_count = {count: token for token, count in runs.items()}
        ids = token_ids.tolist()
        spans = [(int(f.offset), int(f.offset + f.length)) for f in features]
        drop: set[int] = set()

        def merged(a: int, b: int) -> int | None:
            if ids[a] in runs and ids[b] in runs:
                return by_count.get(runs[ids[a]] + runs[ids[b]])
            return None

        for i, (start, end) in enumerate(spans):
            prev_end = spans[i - 1][1] if i else 0
            before = start - 1
            while before in drop:  # already joined into the token before it
                before -= 1
            token = None if start in drop or before < 0 else merged(before, start)
            if token is not None and before >= prev_end:  # a prompt token joins the item
                ids[start], drop = token, drop | {before}
            elif token is not None:  # the previous item's last token takes our first
                ids[before], drop = token, drop | {start}
            if end < len(ids) and end - 1 not in drop:
                token = merged(end - 1, end)  # the next item's first token when adjacent
                if token is not None:
                    ids[end - 1], drop = token, drop | {end}
        if not drop:
            return token_ids, features
        dropped = np.array(sorted(drop))
        kept = np.asarray([t for j, t in enumerate(ids) if j not in drop], dtype=np.int32)
        shifted = []
        for f in features:
            trim = int(f.offset) in drop  # its first token joined the previous item's last
            mask = None if f.embed_mask is None else np.asarray(f.embed_mask)[trim:]
            shifted.append(
                _core.MMFeature(
                    f.modality,
                    f.identifier,
                    int(f.offset) + trim - int(np.searchsorted(dropped, f.offset + trim)),
                    f.length - trim,
                    f.num_embeds,
                    mask,
                )
            )
        return kept, shifted

    # -- sizes -------------------------------------------------------------------------------
    def num_crops(self, height: int, width: int, kwargs: Mapping | None = None) -> int:
        """Pan-and-scan crops of a ``height x width`` image under the effective settings."""
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        settings = {**self.mm_processor_kwargs, **(kwargs or {})}
        enabled = settings.get("do_pan_and_scan", self.image_processor.do_pan_and_scan)
        if not enabled:
            return 0
        # HF's own crop planner, on a zero-cost broadcast view of the image's shape.
        shape_only = np.broadcast_to(np.zeros((), np.uint8), (1, height, width))
        return len(self.image_processor.pan_and_scan(shape_only, **self.geometry))

    def num_embeds(self, modality: str, item: Any, kwargs: Mapping | None = None) -> int:
        self.check_modality(modality)
        return (1 + self.num_crops(*image_size(item), kwargs)) * self.tokens_per_view

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        """Embeddings of ``{"pixel_values": [views, 3, S, S]}`` (or one ``[3, S, S]`` view)."""
        self.check_modality(modality)
        pixels = data["pixel_values"]
        shape = tuple(pixels.shape)
        views = 1 if len(shape) == 3 else shape[0]
        if shape[-3:] != (3, self.tile_size, self.tile_size) or len(shape) not in (3, 4):
            raise ValueError(
                f"pixel_values must have shape [views, 3, {self.tile_size}, {self.tile_size}], "
                f"got {list(shape)}"
            )
        if not 1 <= views <= 1 + int(self.geometry["pan_and_scan_max_num_crops"]):
            raise ValueError(f"pixel_values has {views} views; at most 1 + max crops allowed")
        return views * self.tokens_per_view

    # -- pixels ------------------------------------------------------------------------------
    def process(self, modality: str, items: list, kwargs: Mapping | None = None) -> list[dict]:
        """``[{"pixel_values": float32 [1 + crops, 3, S, S]}, ...]``, one per image."""
        from huggingface_hub.errors import StrictDataclassError

        self.check_modality(modality)
        if not items:
            return []
        settings = {**self.mm_processor_kwargs, **(kwargs or {})}
        overrides = {k: v for k, v in settings.items() if k in REQUEST_KWARGS}
        try:
            out = self.image_processor(
                images=items, return_tensors="pt", **self.geometry, **overrides
            )
        except (StrictDataclassError, TypeError) as e:  # HF's check of a setting's value
            raise ValueError(f"invalid mm_processor_kwargs {overrides}: {e}") from None
        views = [1 + int(n) for n in out["num_crops"]]
        return [{"pixel_values": p} for p in out["pixel_values"].split(views)]

    def dummy_items(self, modality: str, count: int, max_embeds: int | None = None) -> list:
        """``count`` gray images with the most views: wide enough for the most crops."""
        from PIL import Image

        self.check_modality(modality)
        side = max(int(self.geometry["pan_and_scan_min_crop_size"]), 1)
        crops = int(self.geometry["pan_and_scan_max_num_crops"])
        width = side * max(crops, 2) * 2  # ratio past the activation threshold, crops >= side
        return [Image.new("RGB", (width, side * 2), (128, 128, 128)) for _ in range(count)]
