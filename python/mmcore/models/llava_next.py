"""LLaVA-NeXT: anyres tiles through the LLaVA encoder, unpadded, one newline embedding per row."""

from __future__ import annotations

import torch
from torch import nn

from mmcore.models.llava import LlavaModel
from mmcore.multimodal import anyres


class LlavaNextModel(LlavaModel):
    """LLaVA-NeXT (HF ``LlavaNextForConditionalGeneration``), mmcore's model contract.

    Items for :meth:`encode` are ``{"pixel_values": [tiles, 3, S, S], "image_sizes": [2]}``
    (``image_sizes`` = original (height, width); extra padded tiles are ignored).
    """

    # Tiles run through LLaVA's sharded tower and projector; image_newline is replicated.
    supports_tensor_parallel = True

    def __init__(self, hf_config, *, dtype: torch.dtype, device: torch.device):
        if hf_config.vision_feature_select_strategy != "default":
            raise ValueError(
                "llava_next needs vision_feature_select_strategy='default' (tiles without CLS)"
            )
        super().__init__(hf_config, dtype=dtype, device=device)
        self.image_newline = nn.Parameter(
            torch.zeros(hf_config.text_config.hidden_size, dtype=dtype, device=device)
        )
        vision = hf_config.vision_config
        self.pinpoints = [list(map(int, p)) for p in hf_config.image_grid_pinpoints]
        self.tile_size, self.patch_size = vision.image_size, vision.patch_size
        self.tile_side = self.tile_size // self.patch_size

    def num_embeds(self, height: int, width: int) -> int:
        """Embeddings :meth:`encode` returns for an image of ``height x width``."""
        return anyres.num_embeds(height, width, self.pinpoints, self.tile_size, self.patch_size)

    def _pack(self, tiles: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Base tile features, then the unpadded grid map row by row, each row + newline."""
        side = self.tile_side
        rows, cols = anyres.grid_shape(height, width, self.pinpoints, self.tile_size)
        base, grid = tiles[0], tiles[1:]
        hidden = grid.shape[-1]
        grid = grid.view(rows, cols, side, side, hidden).permute(4, 0, 2, 1, 3)
        grid = grid.reshape(hidden, rows * side, cols * side)
        kept_h, kept_w = anyres.unpadded_shape(height, width, rows * side, cols * side)
        top, left = (rows * side - kept_h) // 2, (cols * side - kept_w) // 2
        grid = grid[:, top : top + kept_h, left : left + kept_w]
        newline = self.image_newline[:, None, None].expand(hidden, kept_h, 1).to(grid.dtype)
        grid = torch.cat([grid, newline], dim=-1).flatten(1, 2).transpose(0, 1)
        return torch.cat([base, grid], dim=0)

    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Projected embeddings per image; the tiles of all items run in one tower call."""
        self._check_modality(modality)
        if not items:
            return []
        sizes, pixel_chunks = [], []
        for item in items:
            height, width = (int(v) for v in item["image_sizes"].reshape(-1)[:2].tolist())
            count = anyres.num_tiles(height, width, self.pinpoints, self.tile_size)
            pixels = item["pixel_values"].reshape(-1, *item["pixel_values"].shape[-3:])
            if pixels.shape[0] < count:
                raise ValueError(
                    f"image of size {height}x{width} needs {count} tiles, got {pixels.shape[0]}"
                )
            sizes.append((height, width, count))
            pixel_chunks.append(pixels[:count])
        tiles = self.encode_tiles(torch.cat(pixel_chunks))
        per_item = tiles.split([count for _, _, count in sizes])
        return [self._pack(t, h, w) for t, (h, w, _) in zip(per_item, sizes)]
