"""LLaVA-1.5 processor: CLIP-style resize + center crop, a fixed number of embeddings per image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmcore.multimodal.processor import MultiModalProcessor, image_size

# HF image-processor settings that change pixel values but never the number of embeddings.
PIXEL_SETTINGS = frozenset(
    {"do_normalize", "image_mean", "image_std", "do_rescale", "rescale_factor", "resample"}
)


def _image_processor(model_dir: str, overrides: dict):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_dir, **overrides)


def _field(size, key: str):
    """A field of a size given as a dict or as transformers' ``SizeDict`` object."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _crop_side(image_processor) -> int:
    crop = getattr(image_processor, "crop_size", None) or image_processor.size
    height = _field(crop, "height") or _field(crop, "shortest_edge")
    width = _field(crop, "width") or _field(crop, "shortest_edge")
    if height != width:
        raise ValueError(f"the image processor crops to {height}x{width}; CLIP needs a square")
    return int(height)


class LlavaMultiModalProcessor(MultiModalProcessor):
    """Images for :class:`mmcore.models.llava.LlavaModel` (items -> ``{"pixel_values"}``)."""

    supported_modalities = ("image",)
    processor_kwargs = PIXEL_SETTINGS
    # Geometry can only be changed for the whole engine (it is checked against the tower).
    construction_kwargs = frozenset(
        {"size", "crop_size", "do_resize", "do_center_crop", "do_pad", "image_grid_pinpoints"}
    )

    def __init__(self, model_dir, hf_config, tokenizer, mm_processor_kwargs=None):
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        self.image_processor = _image_processor(self.model_dir, self.mm_processor_kwargs)
        vision = hf_config.vision_config
        self.tile_size, self.patch_size = int(vision.image_size), int(vision.patch_size)
        side = _crop_side(self.image_processor)
        if side != self.tile_size:
            raise ValueError(
                f"image processor output {side}px does not match the vision tower's {self.tile_size}px"
            )
        self.image_token_id = int(
            getattr(hf_config, "image_token_id", None) or hf_config.image_token_index
        )

    def placeholder_token_id(self, modality: str) -> int:
        self.check_modality(modality)
        return self.image_token_id

    def num_image_embeds(self, height: int, width: int) -> int:
        """Embeddings of an image of ``height x width``: one per patch (+ CLS with "full")."""
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        keep_cls = self.hf_config.vision_feature_select_strategy == "full"
        return (self.tile_size // self.patch_size) ** 2 + int(keep_cls)

    def num_embeds(self, modality: str, item: Any, kwargs: Mapping | None = None) -> int:
        self.check_modality(modality)
        return self.num_image_embeds(*image_size(item))

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        """Embeddings for an item the user already processed (``{"pixel_values": [3, S, S]}``)."""
        self.check_modality(modality)
        pixels = data["pixel_values"]
        expected = (3, self.tile_size, self.tile_size)
        if tuple(pixels.shape) != expected:
            raise ValueError(
                f"pixel_values must have shape {list(expected)}, got {list(pixels.shape)}"
            )
        return self.num_image_embeds(self.tile_size, self.tile_size)

    def _preprocess(self, items: list, kwargs: Mapping | None):
        from huggingface_hub.errors import StrictDataclassError

        overrides = {k: v for k, v in (kwargs or {}).items() if k in PIXEL_SETTINGS}
        try:
            return self.image_processor(images=items, return_tensors="pt", **overrides)
        except (StrictDataclassError, TypeError) as e:  # HF's check of a setting's value
            raise ValueError(f"invalid mm_processor_kwargs {overrides}: {e}") from None

    def process(self, modality: str, items: list, kwargs: Mapping | None = None) -> list[dict]:
        """``[{"pixel_values": float32 [3, S, S]}, ...]``, one per image."""
        self.check_modality(modality)
        if not items:
            return []
        out = self._preprocess(items, kwargs)
        return [{"pixel_values": pixels} for pixels in out["pixel_values"]]

    def largest_image_size(self) -> tuple[int, int]:
        """(height, width) of an image with the most embeddings."""
        return self.tile_size, self.tile_size

    def dummy_items(self, modality: str, count: int, max_embeds: int | None = None) -> list:
        """``count`` mid-gray RGB images of :meth:`largest_image_size`."""
        from PIL import Image

        self.check_modality(modality)
        height, width = self.largest_image_size()
        return [Image.new("RGB", (width, height), (128, 128, 128)) for _ in range(count)]
