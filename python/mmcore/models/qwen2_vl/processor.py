"""Qwen2-VL / Qwen2.5-VL processor: native resolution, counts from size, video, M-RoPE layout.

Images and video frames are resized to multiples of ``patch * merge`` pixels keeping the aspect
ratio, within ``[min_pixels, max_pixels]`` (HF ``smart_resize``); every 2 frames form one
temporal patch (an odd count repeats the last frame). Items become
``{"pixel_values": [patches, C*P*P], "image_grid_thw": [1, h, w]}`` (one frame: HF's layout
repeats each image patch over the 2 temporal slots, which the model does on the device, see
:func:`expand_image_patches`) and
``{"pixel_values_videos": [patches, C*2*P*P], "video_grid_thw": [t, h, w],
"second_per_grid_ts": s}``.
Per-request ``mm_processor_kwargs``: ``min_pixels``, ``max_pixels`` (images and frames),
``fps``, ``num_frames``, ``max_frames`` (video sampling).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mmcore.multimodal.mrope import VisionSpan, compute_mrope_positions
from mmcore.multimodal.processor import MRopePositions, MultiModalProcessor, image_size
from mmcore.multimodal.video import DEFAULT_FPS, VideoClip, positive

MAX_ASPECT_RATIO = 200
# HF Qwen2VLVideoProcessor's defaults, for checkpoints without a video processor config.
_VIDEO_DEFAULT_PIXELS = (128 * 28 * 28, 768 * 28 * 28)
_VIDEO_DEFAULT_MAX_FRAMES = 768


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    """(height, width) rounded to multiples of ``factor`` with a pixel count in
    ``[min_pixels, max_pixels]`` and the aspect ratio kept (HF Qwen2-VL ``smart_resize``).

    Raises:
        ValueError: a side shorter than ``factor`` (smaller than one merged patch) or an
            aspect ratio over 200.
    """
    if height < factor or width < factor:
        raise ValueError(
            f"image {width}x{height} is smaller than one merged patch ({factor}x{factor} pixels)"
        )
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image {width}x{height} has an aspect ratio over {MAX_ASPECT_RATIO}, which the model "
            "cannot take"
        )
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def expand_image_patches(pixels: torch.Tensor, temporal: int, patch_dim: int) -> torch.Tensor:
    """Image patches in HF's layout ``[N, C*T*P*P]`` (``patch_dim`` wide).

    Args:
        pixels: ``[N, C*P*P]`` (one frame per patch, repeated here over the ``temporal``
            slots, exactly as HF's image processor repeats it) or already ``[N, patch_dim]``.
        temporal: the vision tower's temporal patch size.
        patch_dim: ``C * T * P * P``.

    Raises:
        ValueError: any other width.
    """
    width = pixels.shape[-1]
    if pixels.dim() == 2 and width == patch_dim:
        return pixels
    if pixels.dim() != 2 or width * temporal != patch_dim:
        raise ValueError(
            f"image pixel_values must be [patches, {patch_dim // temporal}] or "
            f"[patches, {patch_dim}], got {list(pixels.shape)}"
        )
    rows = pixels.view(pixels.shape[0], 3, 1, width // 3)
    return rows.expand(-1, -1, temporal, -1).reshape(pixels.shape[0], patch_dim)


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _pixel_range(cfg: dict, default: tuple[int, int]) -> tuple[int, int]:
    size = cfg.get("size") or {}
    low = cfg.get("min_pixels", size.get("shortest_edge", default[0]))
    high = cfg.get("max_pixels", size.get("longest_edge", default[1]))
    return int(low), int(high)


def _largest_grid(max_units: int) -> tuple[int, int]:
    """(a, b) merged patches with the largest a*b <= max_units and b/a <= 200."""
    best = (1, 1)
    for a in range(1, math.isqrt(max_units) + 1):
        b = min(max_units // a, a * MAX_ASPECT_RATIO)
        if a * b > best[0] * best[1]:
            best = (a, b)
    return best


class Qwen2VLMultiModalProcessor(MultiModalProcessor):
    """Images and videos for :class:`mmcore.models.qwen2_vl.Qwen2VLModel`.

    Args:
        model_dir: the checkpoint (``preprocessor_config.json``, optional
            ``video_preprocessor_config.json``).
        hf_config: ``Qwen2VLConfig`` or ``Qwen2_5_VLConfig``.
        tokenizer: the checkpoint's tokenizer.
        mm_processor_kwargs: defaults for every request (keys of ``processor_kwargs``).
    """

    supported_modalities = ("image", "video")
    processor_kwargs = frozenset({"min_pixels", "max_pixels", "fps", "num_frames", "max_frames"})

    def __init__(self, model_dir, hf_config, tokenizer, mm_processor_kwargs=None):
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        from transformers import AutoImageProcessor

        self.image_processor = AutoImageProcessor.from_pretrained(self.model_dir)
        vision = hf_config.vision_config
        self.patch = int(vision.patch_size)
        self.merge = int(vision.spatial_merge_size)
        self.temporal = int(vision.temporal_patch_size)
        self.factor = self.patch * self.merge
        image_cfg = _read_json(os.path.join(self.model_dir, "preprocessor_config.json"))
        for key, want in (("patch_size", self.patch), ("merge_size", self.merge)):
            if int(image_cfg.get(key, want)) != want:
                raise ValueError(
                    f"preprocessor {key}={image_cfg[key]} differs from the model's {want}"
                )
        self.image_pixels = _pixel_range(image_cfg, (56 * 56, 28 * 28 * 1280))
        video_cfg = _read_json(os.path.join(self.model_dir, "video_preprocessor_config.json"))
        self.video_pixels = (
            _pixel_range(video_cfg, _VIDEO_DEFAULT_PIXELS) if video_cfg else self.image_pixels
        )
        self.video_max_frames = int(video_cfg.get("max_frames", _VIDEO_DEFAULT_MAX_FRAMES))
        self.image_token_id = int(hf_config.image_token_id)
        self.video_token_id = int(hf_config.video_token_id)
        text = hf_config.get_text_config()
        self.max_positions = int(getattr(text, "max_position_embeddings", 32768))
        # Qwen2.5-VL: temporal M-RoPE positions advance with absolute time.
        self.tokens_per_second = getattr(vision, "tokens_per_second", None)
        self.settings()  # check the construction-time values

    # -- settings ---------------------------------------------------------------------------
    def settings(self, request_kwargs: Mapping | None = None) -> dict:
        settings = super().settings(request_kwargs)
        for key in ("min_pixels", "max_pixels"):
            value = settings.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        for key, kind in (("fps", float), ("num_frames", int), ("max_frames", int)):
            positive(key, settings.get(key), kind)
        low, high = settings.get("min_pixels"), settings.get("max_pixels")
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_pixels ({low}) is larger than max_pixels ({high})")
        return settings

    def _pixels(self, modality: str, settings: Mapping | None) -> tuple[int, int]:
        low, high = self.image_pixels if modality == "image" else self.video_pixels
        settings = settings or {}
        low, high = settings.get("min_pixels", low), settings.get("max_pixels", high)
        if low > high:
            raise ValueError(f"min_pixels ({low}) is larger than max_pixels ({high})")
        return low, high

    def _grid(self, modality: str, height: int, width: int, settings) -> tuple[int, int]:
        """(h, w) in patches after resizing."""
        low, high = self._pixels(modality, settings)
        h, w = smart_resize(height, width, self.factor, low, high)
        return h // self.patch, w // self.patch

    # -- the contract -----------------------------------------------------------------------
    def placeholder_token_id(self, modality: str) -> int:
        self.check_modality(modality)
        return self.image_token_id if modality == "image" else self.video_token_id

    def num_embeds(self, modality: str, item: Any, kwargs: Mapping | None = None) -> int:
        self.check_modality(modality)
        if modality == "image":
            h, w = self._grid("image", *image_size(item), kwargs)
            return h * w // self.merge**2
        h, w = self._grid("video", *item.size, kwargs)
        return -(-item.num_frames // self.temporal) * h * w // self.merge**2

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        """Embeddings of an item processed by the user: patches and grid as this processor
        makes them (``pixel_values`` + ``image_grid_thw``, or the ``_videos`` pair)."""
        self.check_modality(modality)
        grid_key = "image_grid_thw" if modality == "image" else "video_grid_thw"
        pixels_key = "pixel_values" if modality == "image" else "pixel_values_videos"
        if grid_key not in data or pixels_key not in data:
            raise ValueError(f"processed {modality} items need '{pixels_key}' and '{grid_key}'")
        t, h, w = (int(v) for v in data[grid_key].reshape(-1).tolist())
        patch_dim = 3 * self.temporal * self.patch * self.patch
        widths = (patch_dim, patch_dim // self.temporal) if modality == "image" else (patch_dim,)
        shape = tuple(data[pixels_key].shape)
        if h % self.merge or w % self.merge or shape not in {(t * h * w, x) for x in widths}:
            raise ValueError(
                f"{pixels_key} must be [{t * h * w}, {patch_dim}] for {grid_key} {[t, h, w]} "
                f"(h and w multiples of {self.merge}), got {list(data[pixels_key].shape)}"
            )
        return t * h * w // self.merge**2

    def _frames_patches(self, frames: list, modality: str, settings) -> tuple[torch.Tensor, list]:
        """Resize + normalize frames with HF's image processor, one temporal slice each:
        ``[num_frames, h * w, C * P * P]`` and the (h, w) grid."""
        low, high = self._pixels(modality, settings)
        out = self.image_processor(
            images=frames,
            size={"shortest_edge": low, "longest_edge": high},
            temporal_patch_size=1,
            return_tensors="pt",
        )
        grid = out["image_grid_thw"][0, 1:].tolist()
        per_frame = grid[0] * grid[1]
        return out["pixel_values"].view(len(frames), per_frame, -1), grid

    def _process_image(self, image, settings) -> dict:
        patches, (h, w) = self._frames_patches([image], "image", settings)
        return {
            "pixel_values": patches[0].contiguous(),  # one frame: half HF's bytes to move
            "image_grid_thw": torch.tensor([1, h, w], dtype=torch.int64),
        }

    def _process_video(self, clip: VideoClip, settings) -> dict:
        frames = list(clip.frames)
        if pad := -len(frames) % self.temporal:  # odd counts repeat the last frame, as HF does
            frames += [frames[-1]] * pad
        patches, (h, w) = self._frames_patches(frames, "video", settings)
        t = len(frames) // self.temporal
        # [t, T, hw, C, PP] -> [t, hw, C, T, PP]: each patch holds its 2 frames per channel
        c_pp = patches.shape[-1]
        grouped = patches.view(t, self.temporal, h * w, 3, c_pp // 3).permute(0, 2, 3, 1, 4)
        fps = clip.fps or (settings or {}).get("fps") or DEFAULT_FPS
        return {
            "pixel_values_videos": grouped.reshape(t * h * w, -1).contiguous(),
            "video_grid_thw": torch.tensor([t, h, w], dtype=torch.int64),
            "second_per_grid_ts": torch.tensor(self.temporal / float(fps), dtype=torch.float32),
        }

    def process(self, modality: str, items: list, kwargs: Mapping | None = None) -> list[dict]:
        self.check_modality(modality)
        if modality == "image":
            return [self._process_image(image, kwargs) for image in items]
        return [self._process_video(clip, kwargs) for clip in items]

    def dummy_items(self, modality: str, count: int, max_embeds: int | None = None) -> list:
        """The largest image (``max_pixels``), or the longest video of largest frames whose
        embeddings fit ``max_embeds`` (at most the checkpoint's ``max_frames``)."""
        from PIL import Image

        self.check_modality(modality)
        low, high = self._pixels(modality, None)
        a, b = _largest_grid(max(1, high // self.factor**2))
        height, width = a * self.factor, b * self.factor
        if modality == "image":
            return [Image.new("RGB", (width, height), (128, 128, 128)) for _ in range(count)]
        per_step = a * b
        steps = -(-self.video_max_frames // self.temporal)
        if max_embeds is not None:
            steps = max(1, min(steps, max_embeds // per_step))
        frames = np.full((steps * self.temporal, height, width, 3), 128, dtype=np.uint8)
        return [VideoClip(frames, DEFAULT_FPS) for _ in range(count)]

    def mrope_positions(self, token_ids: np.ndarray, items: list) -> MRopePositions:
        """M-RoPE layout of the expanded prompt (HF ``get_rope_index``).

        Raises:
            ValueError: an item without its grid, or positions past the model's
                ``max_position_embeddings`` (a video longer than the model can take).
        """
        spans = []
        for item in items:
            key = "image_grid_thw" if item.modality == "image" else "video_grid_thw"
            data = item.data or {}
            if key not in data:
                raise ValueError(f"Qwen2-VL {item.modality} items need '{key}' (for M-RoPE)")
            t, h, w = (int(v) for v in data[key].reshape(-1).tolist())
            interval = 1.0
            if item.modality == "video" and self.tokens_per_second is not None:
                seconds = float(data.get("second_per_grid_ts", torch.tensor(1.0)))
                interval = float(np.float32(self.tokens_per_second) * np.float32(seconds))
            spans.append(VisionSpan(item.offset, t, h // self.merge, w // self.merge, interval))
        mrope = compute_mrope_positions(len(token_ids), spans)
        top = int(mrope.positions.max()) if len(token_ids) else 0
        if top >= self.max_positions:
            raise ValueError(
                f"the prompt reaches M-RoPE position {top}, beyond the model's "
                f"{self.max_positions} positions (a video or prompt too long for the model)"
            )
        return mrope
