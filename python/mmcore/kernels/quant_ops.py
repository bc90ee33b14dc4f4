"""Torch custom op over the per-token FP8 quantiser kernel (``cpp/kernels/quant_fp8.cu``), the
reference as the CPU path.

``mmcore::per_token_quant_fp8`` runs before every W8A8 GEMM: one launch instead of torch's
five (amax, divide, clamp, divide, cast), bit for bit :func:`mmcore.kernels.reference.
per_token_quant_fp8`. It is functional and has a fake implementation, so it traces under
``torch.compile`` and replays in CUDA graphs. CUDA tensors of float16 / bfloat16 / float32 go
to ``mmcore._kernels`` when it is built with the kernel; on CUDA without it the op raises
(no silent fallback on a GPU); CPU tensors take the reference.
"""

from __future__ import annotations

import torch

from mmcore.kernels import reference
from mmcore.kernels.cuda_module import DTYPE_CODES, kernels_module, stream_handle


def _kernel():
    module = kernels_module()
    return module if hasattr(module, "per_token_quant_fp8") else None


@torch.library.custom_op("mmcore::per_token_quant_fp8", mutates_args=())
def _per_token_quant_fp8_op(x: torch.Tensor, min_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not x.is_cuda:
        return reference.per_token_quant_fp8(x, min_scale)
    kernel = _kernel()
    if kernel is None or x.dtype not in DTYPE_CODES:
        raise ValueError(
            f"per_token_quant_fp8: no CUDA kernel for {x.dtype} inputs (mmcore._kernels built "
            f"with it: {kernel is not None})"
        )
    rows = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty(rows.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty((rows.shape[0], 1), dtype=torch.float32, device=x.device)
    with torch.cuda.device(x.device):
        kernel.per_token_quant_fp8(
            x=rows.data_ptr(), x_stride=rows.stride(0), out=out.data_ptr(),
            scales=scales.data_ptr(), num_tokens=rows.shape[0], hidden=rows.shape[1],
            min_scale=min_scale, dtype=DTYPE_CODES[x.dtype], stream=stream_handle(x),
        )  # fmt: skip
    return out, scales


@_per_token_quant_fp8_op.register_fake
def _(x, min_scale):
    return (
        x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
        x.new_empty((x.shape[0], 1), dtype=torch.float32),
    )


def per_token_quant_fp8(x: torch.Tensor, min_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row FP8 e4m3 quantisation of a 2-D tensor.

    Args:
        x: ``[R, C]`` activations (float16, bfloat16 or float32).
        min_scale: floor of a row's scale (an all-zero row would divide by zero).

    Returns:
        ``(x_fp8 [R, C], scale float32 [R, 1])`` with ``x ~= x_fp8 * scale``.
    """
    if x.dim() != 2:
        raise ValueError(f"per_token_quant_fp8: expected [R, C], got {tuple(x.shape)}")
    return torch.ops.mmcore.per_token_quant_fp8(x, float(min_scale))
