"""The LM head's GEMM with float32 output: half-precision logits of magnitude 16-32 would be
rounded to steps of 1/16-1/8 (bf16), enough to flip greedy choices between close tokens."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


@functools.cache
def _cuda_mm_has_out_dtype(device_index: int) -> bool:
    """Whether this torch's CUDA ``mm`` takes ``out_dtype`` (half inputs, float32 output)."""
    a = torch.ones(2, 2, dtype=torch.bfloat16, device=f"cuda:{device_index}")
    try:
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError):
        return False


def logits_float32(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``hidden [N, H] @ weight[V, H].T`` as float32 ``[N, V]``.

    On CUDA with half-precision inputs the GEMM accumulates in float32 and writes float32
    (no rounding of the logits to the model dtype); elsewhere ``F.linear`` then ``.float()``.
    """
    if (
        hidden.is_cuda
        and hidden.dtype in _HALF
        and _cuda_mm_has_out_dtype(hidden.device.index or 0)
    ):
        return torch.mm(hidden, weight.t(), out_dtype=torch.float32)
    return F.linear(hidden, weight).float()
