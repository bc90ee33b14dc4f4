"""RMSNorm as Llama-family checkpoints define it (normalize in float32, scale in input dtype)."""

from __future__ import annotations

import torch
from torch import nn

from mmcore.distributed.communication import all_reduce_add_rms_norm
from mmcore.layers.attention import select_op


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``; the weight is named ``weight`` as in HF.

    Called with a ``residual``, it first adds it (the decoder layer's skip connection) and
    returns ``(normed, x + residual)`` from one fused kernel on CUDA.
    """

    def __init__(self, hidden_size: int, eps: float, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype, device=device))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return select_op("rms_norm", x)(x, self.weight, self.eps)
        return select_op("fused_add_rms_norm", x)(x, residual, self.weight, self.eps)

    def reduce_add(
        self, partial: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(sum of partial over the ranks, residual)``: the all-reduce of the row-parallel
        layer before this norm, done here (one kernel with the add and norm over peer memory).

        On one rank it is ``forward(partial, residual)``.
        """
        return all_reduce_add_rms_norm(partial, residual, self.weight, self.eps)
