"""LLaVA-NeXT "anyres" geometry from an image's size alone (no pixels, no torch).

An image of ``height x width`` is resized into the best grid resolution among
``image_grid_pinpoints`` (most of the image kept, least area wasted), cut into square tiles of
the vision tower's input size, and encoded with one extra downscaled "base" tile. The tiles'
patch features form a ``rows*P x cols*P`` map from which the letterbox padding is cropped, and
one ``image_newline`` embedding ends every remaining row::

    num_embeds = base_tokens + kept_rows * (kept_cols + 1)
"""

from __future__ import annotations

from collections.abc import Sequence


def select_best_resolution(
    height: int, width: int, pinpoints: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """The pinpoint ``(h, w)`` keeping the most image pixels, ties broken by least waste."""
    best, best_kept, best_waste = None, -1, None
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_h * cand_w - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (int(cand_h), int(cand_w)), kept, waste
    if best is None:
        raise ValueError("image_grid_pinpoints is empty")
    return best


def grid_shape(height: int, width: int, pinpoints, tile_size: int) -> tuple[int, int]:
    """Rows and columns of tiles the image is cut into."""
    best_h, best_w = select_best_resolution(height, width, pinpoints)
    return best_h // tile_size, best_w // tile_size


def num_tiles(height: int, width: int, pinpoints, tile_size: int) -> int:
    """Tiles the vision tower encodes for the image: the grid plus the base tile."""
    rows, cols = grid_shape(height, width, pinpoints, tile_size)
    return rows * cols + 1


def unpadded_shape(height: int, width: int, map_h: int, map_w: int) -> tuple[int, int]:
    """Size of the ``map_h x map_w`` feature map once the letterbox padding is cropped."""
    if width / height > map_w / map_h:
        new_h = int(round(height * (map_w / width), 7))
        pad = (map_h - new_h) // 2
        return map_h - 2 * pad, map_w
    new_w = int(round(width * (map_h / height), 7))
    pad = (map_w - new_w) // 2
    return map_h, map_w - 2 * pad


def num_embeds(
    height: int,
    width: int,
    pinpoints,
    tile_size: int,
    patch_size: int,
) -> int:
    """Embeddings LLaVA-NeXT produces for an image (CLS dropped, newline per kept row).

    Args:
        height, width: the image's size in pixels.
        pinpoints: ``image_grid_pinpoints`` as ``[[h, w], ...]``.
        tile_size: the vision tower's input size (``vision_config.image_size``).
        patch_size: the vision tower's patch size.

    Returns:
        The number of embeddings (= placeholder tokens) of the image.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    side = tile_size // patch_size
    rows, cols = grid_shape(height, width, pinpoints, tile_size)
    kept_h, kept_w = unpadded_shape(height, width, rows * side, cols * side)
    return side * side + kept_h * (kept_w + 1)
