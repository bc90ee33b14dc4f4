"""Zero-padding of a gated MLP's inner width to a multiple of 8 elements on CUDA.

A GEMM whose reduction width is not a multiple of 8 (16 bytes of fp16/bf16) cannot use the
TMA-based kernels of Hopper's cuBLAS: Qwen2.5-VL's vision MLP (3,420 wide) ran its down
projection in an sm80 kernel at 1.5 ms a block on an H200, twice the time of its wider
gate/up projection. Zero rows in gate/up and zero columns in down change no result:
``silu(0) * 0 = 0`` and the added products are exact zeros.
"""

from __future__ import annotations

import torch
from torch import nn

ALIGN_ELEMENTS = 8


def pad_gated_mlp(gate_up: nn.Module, down: nn.Module, multiple: int = ALIGN_ELEMENTS) -> int:
    """Pad ``gate_up`` (rows ``[gate | up]``) and ``down`` (input columns) to a multiple.

    Args:
        gate_up: a linear layer whose ``weight`` is ``[2 * inner, in]`` (gate rows, then up
            rows), optional ``bias`` ``[2 * inner]``.
        down: a linear layer whose ``weight`` is ``[out, inner]``.
        multiple: the width to round ``inner`` up to.

    Returns:
        The inner width after padding (unchanged when already a multiple or for FP8 weights).
    """
    inner = gate_up.weight.shape[0] // 2
    padded = -(-inner // multiple) * multiple
    fp8 = getattr(gate_up, "is_fp8", False) or getattr(down, "is_fp8", False)
    if padded == inner or fp8:
        return inner

    def split_rows(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros((2 * padded, *t.shape[1:]))
        out[:inner], out[padded : padded + inner] = t[:inner], t[inner:]
        return out

    gate_up.weight = nn.Parameter(split_rows(gate_up.weight.data), requires_grad=False)
    if gate_up.bias is not None:
        gate_up.bias = nn.Parameter(split_rows(gate_up.bias.data), requires_grad=False)
    down.weight = nn.Parameter(
        nn.functional.pad(down.weight.data, (0, padded - inner)), requires_grad=False
    )
    if hasattr(gate_up, "shard_sizes"):
        gate_up.shard_sizes = [padded, padded]
    return padded
