"""LLaVA-NeXT processor: anyres tiles; embeddings counted from the image size alone."""

from __future__ import annotations

from mmcore.multimodal import anyres
from mmcore.multimodal.llava import LlavaMultiModalProcessor


class LlavaNextMultiModalProcessor(LlavaMultiModalProcessor):
    """Images for :class:`mmcore.models.llava_next.LlavaNextModel`.

    Items -> ``{"pixel_values": [tiles, 3, S, S], "image_sizes": int64 [2] (height, width)}``.
    """

    def __init__(self, model_dir, hf_config, tokenizer, mm_processor_kwargs=None):
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        self.pinpoints = [[int(h), int(w)] for h, w in hf_config.image_grid_pinpoints]
        processor_pinpoints = [
            [int(h), int(w)] for h, w in self.image_processor.image_grid_pinpoints
        ]
        if processor_pinpoints != self.pinpoints:
            raise ValueError(
                f"image processor grid pinpoints {processor_pinpoints} differ from the model's "
                f"{self.pinpoints}"
            )

    def num_image_embeds(self, height: int, width: int) -> int:
        """Base tile tokens + unpadded grid tokens + one newline per grid row."""
        return anyres.num_embeds(height, width, self.pinpoints, self.tile_size, self.patch_size)

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        """Embeddings for an already processed item: ``pixel_values`` [tiles, 3, S, S] and
        ``image_sizes`` (height, width) of the original image."""
        self.check_modality(modality)
        if "image_sizes" not in data:
            raise ValueError("processed LLaVA-NeXT items need 'image_sizes' besides 'pixel_values'")
        height, width = (int(v) for v in data["image_sizes"].flatten().tolist())
        tiles = anyres.num_tiles(height, width, self.pinpoints, self.tile_size)
        pixels = data["pixel_values"]
        expected = (tiles, 3, self.tile_size, self.tile_size)
        if tuple(pixels.shape) != expected:
            raise ValueError(
                f"pixel_values must have shape {list(expected)}, got {list(pixels.shape)}"
            )
        return self.num_image_embeds(height, width)

    def process(self, modality: str, items: list, kwargs=None) -> list[dict]:
        self.check_modality(modality)
        if not items:
            return []
        out = self._preprocess(items, kwargs)
        result = []
        for pixels, size in zip(out["pixel_values"], out["image_sizes"]):
            height, width = (int(v) for v in size.tolist())
            count = anyres.num_tiles(height, width, self.pinpoints, self.tile_size)
            result.append({"pixel_values": pixels[:count].clone(), "image_sizes": size.clone()})
        return result

    def largest_image_size(self) -> tuple[int, int]:
        """The pinpoint resolution with the most embeddings (an image that needs no padding)."""
        best = max(self.pinpoints, key=lambda hw: self.num_image_embeds(hw[0], hw[1]))
        return best[0], best[1]
