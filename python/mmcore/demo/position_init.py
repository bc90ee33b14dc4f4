"""Start the vision tower's position embeddings as 2-D sines and cosines, as loud as the patches.

CLIP initialises its learnt position embeddings at a standard deviation of 0.02, about a tenth of
what a demo picture's patch embeddings measure, so at first every image token looks the same
wherever it lies: a linear probe on the untrained tower's tokens placed shapes in their third no
better than chance after 200 steps, while with the embeddings below it was right 98% of the time
(docs/demo_model.md). Where a shape is ("Where is the star?") and how patches make a shape both
need it. Only the starting values change: the tensor, its shape and the architecture stay CLIP's,
so the checkpoint loads as before.
"""

from __future__ import annotations

import math

import torch

# Frequencies from 1 to 1/100 radian per patch: the lowest vary slowly across a 14-patch side.
_BASE = 100.0


def sincos_table(grid: int, dim: int) -> torch.Tensor:
    """(grid * grid, dim) embeddings: sin and cos of x, then of y, at dim // 4 frequencies each.

    Args:
        grid: patches per side.
        dim: embedding width (dimensions past 4 * (dim // 4) stay 0).

    Returns:
        A float32 table, row-major over the patches, with values in [-1, 1].
    """
    quarter = dim // 4
    freqs = 1.0 / _BASE ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter))
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ax, ay = xs.reshape(-1, 1) * freqs, ys.reshape(-1, 1) * freqs
    table = torch.zeros(grid * grid, dim)
    table[:, : 4 * quarter] = torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], 1)
    return table


@torch.no_grad()
def init_position_embeddings(vision_tower, pixel_values: torch.Tensor) -> float:
    """Set a CLIP vision tower's patch position embeddings to a scaled :func:`sincos_table`.

    Args:
        vision_tower: a ``CLIPVisionModel`` (or one with ``.embeddings`` / ``.vision_model``).
        pixel_values: normalised (N, 3, S, S) pictures: the table is scaled to the root mean
            square of their patch embeddings; the class token's position embedding becomes 0.

    Returns:
        The root mean square the table was scaled to.
    """
    embeddings = getattr(vision_tower, "embeddings", None) or vision_tower.vision_model.embeddings
    weight = embeddings.position_embedding.weight
    grid = math.isqrt(weight.shape[0] - 1)
    if grid * grid + 1 != weight.shape[0]:
        raise ValueError(f"{weight.shape[0]} positions are not a class token and a square grid")
    patches = embeddings.patch_embedding(pixel_values.to(weight.device, weight.dtype))
    rms = float(patches.float().pow(2).mean().sqrt())
    table = sincos_table(grid, weight.shape[1])
    table *= rms / float(table.pow(2).mean().sqrt())
    weight.zero_()
    weight[1:] = table.to(weight.dtype)
    return rms


def resize_position_embeddings(weight: torch.Tensor, grid: int) -> torch.Tensor:
    """A class-token + square-grid position table resized to ``grid`` x ``grid`` (bicubic).

    Lets a trained tower go on training at another input size: each patch keeps the embedding
    of where it lies in the picture; the class token's row is kept as it is.

    Args:
        weight: (1 + g * g, dim) table (CLIP's ``position_embedding.weight``).
        grid: patches per side wanted.

    Returns:
        A new (1 + grid * grid, dim) float table of ``weight``'s dtype.
    """
    old = math.isqrt(weight.shape[0] - 1)
    if old * old + 1 != weight.shape[0]:
        raise ValueError(f"{weight.shape[0]} positions are not a class token and a square grid")
    if grid < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    if grid == old:
        return weight.clone()
    table = weight[1:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    table = torch.nn.functional.interpolate(
        table, size=(grid, grid), mode="bicubic", align_corners=False
    )
    table = table.permute(0, 2, 3, 1).reshape(grid * grid, -1)
    return torch.cat([weight[:1].float(), table]).to(weight.dtype)
