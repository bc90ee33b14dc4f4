"""``nn.Linear`` whose small-batch forward runs the skinny GEMM kernel.

Decode steps of a few requests multiply at most a handful of rows by each weight matrix; cuBLAS
then reads the weights well below the memory bandwidth. :class:`Linear` sends such inputs
(CUDA float16/bfloat16, at most ``SKINNY_GEMM_MAX_ROWS`` rows; see
:func:`mmcore.kernels.gemm_ops.skinny_gemm_supported`) to ``mmcore::skinny_gemm`` and
everything else (prefill, CPU, float32) to ``F.linear``. Parameters keep ``nn.Linear``'s names
(``weight``, ``bias``), so checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcore.kernels.gemm_ops import skinny_gemm, skinny_gemm_supported


class Linear(nn.Linear):
    """``y = x @ weight.T + bias`` with the skinny GEMM kernel for small batches on CUDA."""

    #: Process-wide switch (benchmarks compare against cuBLAS with it off).
    use_skinny_gemm: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if (
            Linear.use_skinny_gemm
            and skinny_gemm_supported(x, self.weight)
            and (bias is None or bias.dtype == x.dtype)
        ):
            return skinny_gemm(x, self.weight, bias)
        return F.linear(x, self.weight, bias)
