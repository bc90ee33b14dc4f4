"""InternVL processor: dynamic 448 px tiling with a thumbnail, videos as frames, HF's layout.

An image becomes 1..``max_dynamic_patch`` tiles plus a thumbnail (:mod:`.tiling`); each tile
gives ``image_seq_length`` embeddings (256 for 448 px tiles, 14 px patches, pixel shuffle 0.5).
Prompts carry one ``<IMG_CONTEXT>`` per image and one ``<video>`` per video, expanded as HF's
``InternVLProcessor`` (transformers 5.24) expands them::

    image: <img> <IMG_CONTEXT> x (tiles * 256) </img>
    video: Frame1: <img> <IMG_CONTEXT> x 256 </img> \\nFrame2: <img> ... </img>

(the ``Frame{i}:`` text tokenized on its own, as HF's tokenizer sees it between special
tokens). Video frames are resized to one tile each. Items are ``{"pixel_values":
[tiles, 3, S, S]}``. Per-request ``mm_processor_kwargs``: ``max_dynamic_patch``,
``min_dynamic_patch``, ``use_thumbnail`` (images; HF's ``max_patches`` / ``min_patches`` are
accepted as aliases), ``num_frames`` (HF's frame sampling: evenly spaced, from the middle of
each span), ``fps``, ``max_frames`` (video loading).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmcore.models.internvl import tiling
from mmcore.multimodal import media, video
from mmcore.multimodal.processor import MediaOptions, MultiModalProcessor, image_size
from mmcore.multimodal.video import VideoClip, positive

# HF's defaults (GotOcr2 image processor as InternVLProcessor calls it).
_DEFAULT_TILES = (1, 12)
_ALIASES = {"max_patches": "max_dynamic_patch", "min_patches": "min_dynamic_patch"}
# Tokens of HF's InternVL tokenizer (its ``extra_special_tokens``), attribute -> default text.
_SPECIAL = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def hf_frame_indices(total: int, num_frames: int) -> np.ndarray:
    """HF ``InternVLVideoProcessor.sample_frames`` (``initial_shift=True``): ``num_frames``
    evenly spaced frames, each from the middle of its span.

    Raises:
        ValueError: more frames asked than the video has.
    """
    if num_frames > total:
        raise ValueError(f"num_frames={num_frames} is more than the video's {total} frames")
    step = total / num_frames
    return torch.arange(step / 2, total, step).int().numpy()


def _tile_size(cfg: dict, default: int) -> tuple[int, int]:
    size = cfg.get("size") or {}
    return int(size.get("height", default)), int(size.get("width", default))


class InternVLMultiModalProcessor(MultiModalProcessor):
    """Images and videos for :class:`mmcore.models.internvl.InternVLModel`.

    Args:
        model_dir: the checkpoint (``preprocessor_config.json``, optional
            ``video_preprocessor_config.json``).
        hf_config: ``InternVLConfig``.
        tokenizer: the checkpoint's tokenizer (with ``<img>``, ``</img>``, ``<IMG_CONTEXT>``,
            ``<video>`` as single tokens).
        mm_processor_kwargs: defaults for every request (keys of ``processor_kwargs``).
    """

    supported_modalities = ("image", "video")
    processor_kwargs = frozenset(
        {
            "max_dynamic_patch",
            "min_dynamic_patch",
            "use_thumbnail",
            *_ALIASES,
            *video.SAMPLING_KEYS,
        }
    )

    def __init__(self, model_dir, hf_config, tokenizer, mm_processor_kwargs=None):
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        vision = hf_config.vision_config
        size = vision.image_size
        self.tile = int(size[0] if isinstance(size, (list, tuple)) else size)
        patch = vision.patch_size
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        side = int(self.tile // patch * float(hf_config.downsample_ratio))
        self.tokens_per_tile = side * side
        image_cfg = _read_json(os.path.join(self.model_dir, "preprocessor_config.json"))
        video_cfg = _read_json(os.path.join(self.model_dir, "video_preprocessor_config.json"))
        for name, cfg in (("image", image_cfg), ("video", video_cfg)):
            if cfg and _tile_size(cfg, self.tile) != (self.tile, self.tile):
                raise ValueError(
                    f"the {name} processor's size {cfg.get('size')} differs from the vision "
                    f"tower's {self.tile}x{self.tile} tiles"
                )
        self.image_mean = image_cfg.get("image_mean", [0.485, 0.456, 0.406])
        self.image_std = image_cfg.get("image_std", [0.229, 0.224, 0.225])
        self.video_mean = video_cfg.get("image_mean", self.image_mean)
        self.video_std = video_cfg.get("image_std", self.image_std)
        self.default_tiles = (
            int(image_cfg.get("min_patches", _DEFAULT_TILES[0])),
            int(image_cfg.get("max_patches", _DEFAULT_TILES[1])),
        )
        self.token_ids = {attr: self._token_id(attr, text) for attr, text in _SPECIAL.items()}
        self.settings_of(self.mm_processor_kwargs)  # refuse bad construction values now

    def _token_id(self, attr: str, default: str) -> int:
        text = getattr(self.tokenizer, attr, None) or default
        token_id = self.tokenizer.convert_tokens_to_ids(text)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the InternVL tokenizer has no {text!r} token")
        return int(token_id)

    # -- settings ------------------------------------------------------------------------------
    def settings_of(self, kwargs: Mapping | None) -> tuple[int, int, bool]:
        """(min tiles, max tiles, thumbnail) of a request's effective settings.

        Raises:
            ValueError: non-positive or non-integer tile counts, min above max, a non-bool
                ``use_thumbnail``.
        """
        kwargs = {_ALIASES.get(k, k): v for k, v in (kwargs or {}).items()}
        low = kwargs.get("min_dynamic_patch", self.default_tiles[0])
        high = kwargs.get("max_dynamic_patch", self.default_tiles[1])
        for name, value in (("min_dynamic_patch", low), ("max_dynamic_patch", high)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if low > high:
            raise ValueError(f"min_dynamic_patch {low} is more than max_dynamic_patch {high}")
        thumbnail = kwargs.get("use_thumbnail", True)
        if not isinstance(thumbnail, bool):
            raise ValueError(f"use_thumbnail must be true or false, got {thumbnail!r}")
        return low, high, thumbnail

    # -- loading -------------------------------------------------------------------------------
    def load_media(
        self, modality: str, raw: Any, options: MediaOptions, kwargs: Mapping | None = None
    ) -> Any:
        """As the base loader; with ``num_frames``, a video's frames are picked as HF's
        InternVL video processor picks them, from all of its decoded frames."""
        settings = dict(kwargs or {})
        num_frames = positive("num_frames", settings.pop("num_frames", None), int)
        if modality != "video" or num_frames is None:
            return super().load_media(modality, raw, options, settings)
        fps = positive("fps", settings.get("fps"))
        max_frames = positive("max_frames", settings.get("max_frames"), int)
        given_frames = isinstance(raw, (VideoClip, np.ndarray, list, tuple))
        if fps is not None and not given_frames:
            raise ValueError("video fps and num_frames are mutually exclusive; give one")
        if given_frames:  # frames as given, at the stated rate
            clip = video.load_video(raw, fps=fps, max_pixels=options.max_image_pixels)
        else:
            clip = self._decode_all(raw, options)
        indices = hf_frame_indices(clip.num_frames, num_frames)
        rate = clip.fps * num_frames / clip.num_frames if clip.fps else None
        frames = clip.frames[indices]
        if max_frames is not None:
            frames = frames[video.uniform_indices(len(frames), min(len(frames), max_frames))]
        return VideoClip(np.ascontiguousarray(frames), rate)

    @staticmethod
    def _decode_all(raw: Any, options: MediaOptions) -> VideoClip:
        """Every frame of an encoded video (bytes, data URL, allowed path or URL)."""
        data = raw
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            data = media.load_bytes(
                raw,
                "video",
                allowed_local_media_path=options.allowed_local_media_path,
                allowed_domains=options.allowed_domains,
                max_bytes=video.DEFAULT_MAX_VIDEO_BYTES,
            )
        frames, fps = video.decode_video_bytes(bytes(data), max_pixels=options.max_image_pixels)
        return VideoClip(frames, fps)

    # -- counts and layout ---------------------------------------------------------------------
    def placeholder_token_id(self, modality: str) -> int:
        self.check_modality(modality)
        key = "context_image_token" if modality == "image" else "video_token"
        return self.token_ids[key]

    def _num_tiles(self, modality: str, item: Any, kwargs: Mapping | None) -> int:
        if isinstance(item, Mapping):  # already processed
            return int(item["pixel_values"].shape[0])
        if modality == "video":
            return video.load_video(item).num_frames
        low, high, thumbnail = self.settings_of(kwargs)
        height, width = image_size(item)
        return tiling.num_tiles(height, width, self.tile, low, high, thumbnail)

    def num_embeds(self, modality: str, item: Any, kwargs: Mapping | None = None) -> int:
        self.check_modality(modality)
        return self._num_tiles(modality, item, kwargs) * self.tokens_per_tile

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        self.check_modality(modality)
        pixels = data.get("pixel_values")
        if (
            pixels is None
            or pixels.dim() != 4
            or tuple(pixels.shape[1:])
            != (
                3,
                self.tile,
                self.tile,
            )
        ):
            raise ValueError(
                f"InternVL processed {modality} data needs pixel_values "
                f"[tiles, 3, {self.tile}, {self.tile}]"
            )
        return int(pixels.shape[0]) * self.tokens_per_tile

    def _frame_prefix(self, index: int) -> list[int]:
        text = f"Frame{index + 1}: " if index == 0 else f"\nFrame{index + 1}: "
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def item_layout(self, modality: str, item: Any, kwargs: Mapping | None = None):
        """``<img>`` + context tokens + ``</img>`` per image; per video frame the same,
        each after its ``Frame{i}:`` text (see module doc)."""
        self.check_modality(modality)
        return self._layout(modality, self._num_tiles(modality, item, kwargs))

    def processed_item_layout(self, modality: str, data: Mapping):
        """The layout of processed ``pixel_values`` (one tile each) or of ``image_embeds``
        (``image_seq_length`` rows per tile, or per frame for a video).

        Raises:
            ValueError: embeddings that are not whole tiles.
        """
        self.check_modality(modality)
        if "image_embeds" not in data:
            return self._layout(
                modality, self.num_embeds_processed(modality, data) // self.tokens_per_tile
            )
        rows = int(data["image_embeds"].shape[0])
        if modality == "video" and rows % self.tokens_per_tile:
            raise ValueError(
                f"video image_embeds must be {self.tokens_per_tile} rows per frame, got {rows}"
            )
        if modality == "image":  # any count: one <img> span, as HF lays out one image
            return self._span(rows)
        return self._layout(modality, rows // self.tokens_per_tile)

    def _span(self, count: int) -> tuple[list[int], list[int]]:
        ids = self.token_ids
        start, end = ids["start_image_token"], ids["end_image_token"]
        return [start, *[ids["context_image_token"]] * count, end], [0, *[1] * count, 0]

    def _layout(self, modality: str, tiles: int) -> tuple[list[int], list[int]]:
        if modality == "image":
            return self._span(tiles * self.tokens_per_tile)
        tokens, mask = [], []
        span_tokens, span_mask = self._span(self.tokens_per_tile)
        for frame in range(tiles):
            prefix = self._frame_prefix(frame)
            tokens += [*prefix, *span_tokens]
            mask += [0] * len(prefix) + span_mask
        return tokens, mask

    # -- tensors -------------------------------------------------------------------------------
    def process(self, modality: str, items: list, kwargs: Mapping | None = None) -> list[dict]:
        self.check_modality(modality)
        if modality == "image":
            low, high, thumbnail = self.settings_of(kwargs)
            out = []
            for image in items:
                image = image if isinstance(image, Image.Image) else media.load_image(image)
                if image.mode != "RGB":
                    image = image.convert("RGB")
                tiles = tiling.tile_image(image, self.tile, low, high, thumbnail)
                out.append(self._item(tiles, self.image_mean, self.image_std))
            return out
        out = []
        for clip in items:
            frames = tiling.resize_frames(video.load_video(clip).frames, self.tile)
            out.append(self._item(frames, self.video_mean, self.video_std))
        return out

    @staticmethod
    def _item(tiles: torch.Tensor, mean, std) -> dict:
        return {
            "pixel_values": tiles,
            "image_mean": torch.tensor(mean, dtype=torch.float32),
            "image_std": torch.tensor(std, dtype=torch.float32),
        }

    def dummy_items(self, modality: str, count: int, max_embeds: int | None = None) -> list:
        """An image of the most tiles the engine's settings give, or a video of the most
        frames whose embeddings fit ``max_embeds``."""
        self.check_modality(modality)
        if modality == "image":
            low, high, thumbnail = self.settings_of(self.mm_processor_kwargs)
            cols, rows = max(
                tiling.candidate_grids(low, high), key=lambda g: (g[0] * g[1], -abs(g[0] - g[1]))
            )
            size = (cols * self.tile, rows * self.tile)
            return [Image.new("RGB", size, (128, 128, 128)) for _ in range(count)]
        frames = max(1, (max_embeds or self.tokens_per_tile) // self.tokens_per_tile)
        clip = np.full((frames, self.tile, self.tile, 3), 128, dtype=np.uint8)
        return [VideoClip(clip, video.DEFAULT_FPS) for _ in range(count)]
