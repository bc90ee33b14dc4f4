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

    def process(self, modality: str, items: list) -> list[dict]:
        self.check_modality(modality)
        if not items:
            return []
        out = self._preprocess(items)
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
