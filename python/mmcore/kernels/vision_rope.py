"""``mmcore::vision_rotary_embedding``: the vision towers' 2-D rope (Qwen2-VL / Qwen2.5-VL) as one
kernel over q and k, in HF's numerics (float32 cos/sin and arithmetic, one rounding).

It replaces about ten torch element-wise kernels per block (casts, the half rotation's
``cat`` and ``neg``, products, sums) that took ~30% of Qwen2.5-VL's tower time on an H200.
"""

from __future__ import annotations

import torch

from mmcore.kernels import reference
from mmcore.kernels.cuda_module import DTYPE_CODES
from mmcore.kernels.fused_ops import _is_integer, _kernels, _rotary_kernel


def _use_kernel(query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor) -> bool:
    return (
        query.is_cuda
        and query.dtype in DTYPE_CODES
        and key.dtype == query.dtype
        and cos_sin_cache.dtype == torch.float32
        and key.device == query.device == cos_sin_cache.device
        and _kernels() is not None
    )


@torch.library.custom_op("mmcore::vision_rotary_embedding", mutates_args=())
def _vision_rotary_embedding_op(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    sections: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    if not _use_kernel(query, key, cos_sin_cache):
        return reference.vision_rotary_embedding(positions, query, key, cos_sin_cache, sections)
    three = (list(sections) + [0, 0, 0])[:3]  # the kernel's M-RoPE rows: 2 used, the third empty
    return _rotary_kernel(positions, query, key, cos_sin_cache, three, float_math=True)


@_vision_rotary_embedding_op.register_fake
def _(positions, query, key, cos_sin_cache, sections):
    return query.new_empty(query.shape), key.new_empty(key.shape)


def vision_rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    sections: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rope of a vision tower's queries and keys by per-token (row, column) positions.

    Args:
        positions: ``[R, T]`` ints (R <= 3 rows, e.g. patch row and patch column).
        query: ``[T, Hq, D]``; key: ``[T, Hk, D]`` (strided views of a fused qkv projection
            are read in place when the last dim is contiguous).
        cos_sin_cache: float32 ``[max_positions, D]``: ``cos`` in the first ``D / 2`` columns,
            ``sin`` in the rest, column ``j`` rotating frequency ``j`` by its section's row.
        sections: frequency counts per position row, summing to ``D / 2``.

    Returns:
        New contiguous ``(query, key)`` in the queries' dtype.

    Raises:
        ValueError: shapes, dtypes or sections that do not fit together.
    """
    name = "vision_rotary_embedding"
    if query.dim() != 3 or key.dim() != 3 or key.shape[0] != query.shape[0]:
        raise ValueError(
            f"{name}: expected query [T, Hq, D] and key [T, Hk, D], got "
            f"{tuple(query.shape)} and {tuple(key.shape)}"
        )
    num_tokens, _, head_dim = query.shape
    if key.shape[2] != head_dim or head_dim == 0 or head_dim % 2:
        raise ValueError(f"{name}: q/k head dims must be equal and even, got {query.shape}")
    section = [int(v) for v in sections]
    if not 1 <= len(section) <= 3 or min(section) < 0 or sum(section) != head_dim // 2:
        raise ValueError(f"{name}: sections must be 1-3 sizes summing to {head_dim // 2}")
    if positions.shape != (len(section), num_tokens) or not _is_integer(positions):
        raise ValueError(
            f"{name}: positions must be [{len(section)}, {num_tokens}] integers, got "
            f"{tuple(positions.shape)} {positions.dtype}"
        )
    if cos_sin_cache.dtype != torch.float32 or cos_sin_cache.dim() != 2:
        raise ValueError(f"{name}: cos_sin_cache must be float32 [max_positions, {head_dim}]")
    if cos_sin_cache.shape[1] != head_dim or cos_sin_cache.shape[0] == 0:
        raise ValueError(f"{name}: cos_sin_cache must be [max_positions, {head_dim}]")
    return torch.ops.mmcore.vision_rotary_embedding(positions, query, key, cos_sin_cache, section)
