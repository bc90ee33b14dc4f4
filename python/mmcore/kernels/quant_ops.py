"""Torch custom ops over the FP8 kernels: the per-token quantiser (``cpp/kernels/quant_fp8.cu``)
and the weight-only GEMV of decode steps (``cpp/kernels/fp8_gemv.cu``); the references as the
CPU path.

``mmcore::per_token_quant_fp8`` runs before every W8A8 GEMM: one launch instead of torch's
five (amax, divide, clamp, divide, cast), bit for bit :func:`mmcore.kernels.reference.
per_token_quant_fp8`. It is functional and has a fake implementation, so it traces under
``torch.compile`` and replays in CUDA graphs. CUDA tensors of float16 / bfloat16 / float32 go
to ``mmcore._kernels`` when it is built with the kernel; on CUDA without it the op raises
(no silent fallback on a GPU); CPU tensors take the reference.

``mmcore::fp8_gemv`` multiplies at most ``FP8_GEMV_MAX_ROWS`` activation rows (float16 /
bfloat16, not quantised) by an e4m3 weight with per-channel scales, reading the weight once:
the FP8 linear layers use it for decode-sized batches on CUDA, where ``torch._scaled_mm``'s
quantise-then-GEMM costs more than the halved weight bytes save.
"""

from __future__ import annotations

import torch

from mmcore.kernels import reference
from mmcore.kernels.cuda_module import DTYPE_CODES, kernels_module, rows_aligned, stream_handle

#: Most activation rows ``fp8_gemv`` takes (``kFp8GemvMaxRows`` in cpp/kernels/fp8_gemv.h).
FP8_GEMV_MAX_ROWS = 8


def _kernel(name: str = "per_token_quant_fp8"):
    module = kernels_module()
    return module if hasattr(module, name) else None


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


def fp8_gemv_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`fp8_gemv` takes this product on CUDA (few rows, 16-byte rows)."""
    return (
        x.is_cuda
        and x.dim() == 2
        and 1 <= x.shape[0] <= FP8_GEMV_MAX_ROWS
        and x.dtype in (torch.float16, torch.bfloat16)
        and weight.dtype == torch.float8_e4m3fn
        and weight.is_contiguous()
        and weight.shape[1] % 16 == 0
        and weight.data_ptr() % 16 == 0
    )


@torch.library.custom_op("mmcore::fp8_gemv", mutates_args=())
def _fp8_gemv_op(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if not x.is_cuda:
        return reference.fp8_gemv(x, weight, weight_scale, bias)
    kernel = _kernel("fp8_gemv")
    if kernel is None:
        raise ValueError("fp8_gemv: mmcore._kernels was built without the FP8 GEMV kernel")
    rows = rows_aligned(x)
    scale = weight_scale.reshape(-1).float().contiguous()
    out = torch.empty((rows.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    b = bias.contiguous() if bias is not None else None
    with torch.cuda.device(x.device):
        kernel.fp8_gemv(
            x=rows.data_ptr(), x_stride=rows.stride(0), weight=weight.data_ptr(),
            weight_scale=scale.data_ptr(), bias=b.data_ptr() if b is not None else 0,
            out=out.data_ptr(), out_stride=out.stride(0), rows=rows.shape[0],
            n=weight.shape[0], k=weight.shape[1], dtype=DTYPE_CODES[x.dtype],
            stream=stream_handle(x),
        )  # fmt: skip
    return out


@_fp8_gemv_op.register_fake
def _(x, weight, weight_scale, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


def fp8_gemv(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ (weight * weight_scale[:, None]).T (+ bias)`` for a few rows, the weight in e4m3.

    Args:
        x: ``[R, K]`` float16 / bfloat16 activations (not quantised), ``R <= FP8_GEMV_MAX_ROWS``
            on CUDA.
        weight: e4m3 ``[N, K]``, contiguous, ``K`` a multiple of 16 on CUDA.
        weight_scale: float32 ``[N]`` (or ``[N, 1]``), one scale per output channel.
        bias: ``[N]`` in ``x``'s dtype, or None.

    Returns:
        ``[R, N]`` in ``x``'s dtype.
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"fp8_gemv: expected x [R, K] and weight [N, K], got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if x.is_cuda and not fp8_gemv_takes(x, weight):
        raise ValueError(
            f"fp8_gemv: {x.shape[0]} rows of {x.dtype} against a {tuple(weight.shape)} "
            f"{weight.dtype} weight is not a product the CUDA kernel takes"
        )
    return torch.ops.mmcore.fp8_gemv(x, weight, weight_scale, bias)
