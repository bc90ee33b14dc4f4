"""InternVL's dynamic tiling: an image becomes a grid of square tiles (plus a thumbnail).

The grid (columns x rows, between ``min_tiles`` and ``max_tiles`` tiles) is the one whose
aspect ratio is closest to the image's; between grids of equal distance the later (larger) one
wins while the image's area exceeds half of that grid's pixel area. The image is resized to
the grid and cut row by row; with more than one tile a thumbnail (the whole image resized to
one tile) follows::

    800x400 image, max 6 tiles -> grid 2x1 -> | tile 0 | tile 1 | + thumbnail = 3 tiles
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Every (columns, rows) with ``min_tiles <= columns * rows <= max_tiles``, ordered by tile
    count (a stable sort of the columns-major enumeration, as HF orders them)."""
    grids = [
        (cols, rows)
        for cols in range(1, max_tiles + 1)
        for rows in range(1, max_tiles + 1)
        if min_tiles <= cols * rows <= max_tiles
    ]
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def best_grid(
    height: int, width: int, tile: int, min_tiles: int, max_tiles: int
) -> tuple[int, int]:
    """(columns, rows) of the tile grid for a ``height x width`` image (see module doc)."""
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def num_tiles(
    height: int, width: int, tile: int, min_tiles: int, max_tiles: int, thumbnail: bool
) -> int:
    """Tiles an image becomes (grid tiles, plus the thumbnail when the grid has several)."""
    if max_tiles <= 1:
        return 1
    cols, rows = best_grid(height, width, tile, min_tiles, max_tiles)
    return cols * rows + (1 if thumbnail and cols * rows > 1 else 0)


def tile_image(
    image: Image.Image, tile: int, min_tiles: int, max_tiles: int, thumbnail: bool
) -> torch.Tensor:
    """The tiles of an RGB ``image`` as uint8 ``[N, 3, tile, tile]``: row-major, thumbnail last
    (bicubic resizes). The tensor is normalized on the device (:func:`normalize_tiles`)."""
    cols, rows = (1, 1)
    if max_tiles > 1:
        cols, rows = best_grid(image.height, image.width, tile, min_tiles, max_tiles)
    extra = 1 if thumbnail and cols * rows > 1 else 0
    out = np.empty((cols * rows + extra, 3, tile, tile), dtype=np.uint8)
    resized = np.asarray(image.resize((cols * tile, rows * tile), Image.BICUBIC))
    # [rows*S, cols*S, 3] -> [rows, cols, 3, S, S]: one copy, no per-tile crops
    grid = resized.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 4, 1, 3)
    out[: cols * rows] = grid.reshape(cols * rows, 3, tile, tile)
    if extra:
        out[-1] = np.asarray(image.resize((tile, tile), Image.BICUBIC)).transpose(2, 0, 1)
    return torch.from_numpy(out)


def resize_frames(frames: np.ndarray, tile: int) -> torch.Tensor:
    """Video frames ``(T, H, W, 3)`` uint8 -> uint8 ``[T, 3, tile, tile]`` (bicubic)."""
    out = np.empty((len(frames), 3, tile, tile), dtype=np.uint8)
    for i, frame in enumerate(frames):
        resized = Image.fromarray(frame).resize((tile, tile), Image.BICUBIC)
        out[i] = np.asarray(resized).transpose(2, 0, 1)
    return torch.from_numpy(out)


def normalize_tiles(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> float32 ``(pixels / 255 - mean) / std``, with HF's arithmetic
    (the rescale in float64, then float32), so the result equals HF's image processor's."""
    scaled = (pixels.double() * (1 / 255)).float()
    mean = mean.to(scaled).view(1, -1, 1, 1)
    std = std.to(scaled).view(1, -1, 1, 1)
    return (scaled - mean) / std
