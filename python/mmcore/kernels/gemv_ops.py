"""Torch custom op over the dense GEMV of decode steps (``cpp/kernels/dense_gemv.cu``).

``mmcore::dense_gemv`` multiplies at most ``DENSE_GEMV_MAX_ROWS`` float16 / bfloat16 rows by a
16-bit ``[N, K]`` weight, reading the weight once with one CTA an SM and no split-K pass:
cuBLAS splits ``K`` for batch-1 products with ``N`` = the hidden size (o_proj, down_proj) and
adds a reduction kernel. The linear layers take it through :func:`decode_linear` for a single
CUDA row, where ``bench/bench_gpu_gemv.py`` measured it 1.04-1.25x cuBLAS on LLaVA-1.5-7B's
shapes (at 2-4 rows cuBLAS is as fast or faster). ``mmcore::dense_gemv_silu_mul`` is the
same product over a gated MLP's ``[gate | up]`` rows ending in ``silu(gate) * up``: a CTA
streams both rows of its channels, so the activation takes no launch of its own
(:func:`decode_gate_up_silu`). CPU tensors take the reference; a CUDA tensor without the
kernel raises (no silent fallback on a GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmcore.kernels import reference
from mmcore.kernels.cuda_module import DTYPE_CODES, kernels_module, rows_aligned, stream_handle

#: Most activation rows ``dense_gemv`` takes (``kDenseGemvMaxRows`` in cpp/kernels/dense_gemv.h).
DENSE_GEMV_MAX_ROWS = 4
#: Largest ``K`` it takes (8 elements x 512 threads x 8 chunks).
DENSE_GEMV_MAX_K = 32768
_GEMV_THREADS = 512  # kDenseGemvThreads


def dense_gemv_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`dense_gemv` takes this product on CUDA (few rows, 16-byte rows)."""
    return (
        x.is_cuda
        and x.dim() == 2
        and 1 <= x.shape[0] <= DENSE_GEMV_MAX_ROWS
        and x.dtype in (torch.float16, torch.bfloat16)
        and weight.dtype == x.dtype
        and weight.dim() == 2
        and weight.stride(1) == 1
        and weight.stride(0) % 8 == 0
        and weight.shape[1] % 8 == 0
        and weight.shape[1] <= DENSE_GEMV_MAX_K
        and weight.data_ptr() % 16 == 0
    )


def _launch(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu_mul: bool
) -> torch.Tensor:
    module = kernels_module()
    if not hasattr(module, "dense_gemv"):
        raise ValueError("dense_gemv: mmcore._kernels was built without the dense GEMV kernel")
    rows = rows_aligned(x)
    n_out = weight.shape[0] // 2 if silu_mul else weight.shape[0]
    out = torch.empty((rows.shape[0], n_out), dtype=x.dtype, device=x.device)
    b = bias.contiguous() if bias is not None else None
    with torch.cuda.device(x.device):
        module.dense_gemv(
            x=rows.data_ptr(), x_stride=rows.stride(0), weight=weight.data_ptr(),
            w_stride=weight.stride(0), bias=b.data_ptr() if b is not None else 0,
            out=out.data_ptr(), out_stride=out.stride(0), rows=rows.shape[0],
            n=weight.shape[0], k=weight.shape[1], dtype=DTYPE_CODES[x.dtype],
            stream=stream_handle(x), silu_mul=silu_mul,
        )  # fmt: skip
    return out


@torch.library.custom_op("mmcore::dense_gemv", mutates_args=())
def _dense_gemv_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if not x.is_cuda:
        return reference.dense_gemv(x, weight, bias)
    return _launch(x, weight, bias, silu_mul=False)


@_dense_gemv_op.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("mmcore::dense_gemv_silu_mul", mutates_args=())
def _dense_gemv_silu_mul_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if not x.is_cuda:
        return reference.silu_and_mul(reference.dense_gemv(x, weight, bias))
    return _launch(x, weight, bias, silu_mul=True)


@_dense_gemv_silu_mul_op.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0] // 2))


def dense_gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` for a few rows, summed in float32 and rounded once.

    Args:
        x: ``[R, K]`` float16 / bfloat16, ``R <= DENSE_GEMV_MAX_ROWS`` on CUDA.
        weight: ``[N, K]`` in ``x``'s dtype, last dim contiguous, ``K`` a multiple of 8 (at
            most ``DENSE_GEMV_MAX_K``) on CUDA.
        bias: ``[N]`` in ``x``'s dtype, or None.

    Returns:
        ``[R, N]`` in ``x``'s dtype.

    Raises:
        ValueError: shapes that do not multiply, or a CUDA product the kernel does not take.
    """
    _check_product("dense_gemv", x, weight, bias)
    return torch.ops.mmcore.dense_gemv(x, weight, bias)


def _check_product(
    name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> None:
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{name}: expected x [R, K] and weight [N, K], got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if bias is not None and (tuple(bias.shape) != (weight.shape[0],) or bias.dtype != x.dtype):
        raise ValueError(
            f"{name}: bias must be [{weight.shape[0]}] {x.dtype}, got {tuple(bias.shape)} "
            f"{bias.dtype}"
        )
    if x.is_cuda and not dense_gemv_takes(x, weight):
        raise ValueError(
            f"{name}: {x.shape[0]} rows of {x.dtype} against a {tuple(weight.shape)} "
            f"{weight.dtype} weight is not a product the CUDA kernel takes"
        )


def dense_gemv_silu_mul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``silu(y[:, :N/2]) * y[:, N/2:]`` of ``y = x @ weight.T (+ bias)``: a gated MLP's
    gate_up projection (weight rows ``[gate | up]``) and its activation as one kernel, rounded
    as :func:`dense_gemv` followed by ``silu_and_mul`` round (bit-equal on CUDA).

    Args:
        x, weight, bias: as for :func:`dense_gemv`; ``N`` even.

    Returns:
        ``[R, N / 2]`` in ``x``'s dtype.

    Raises:
        ValueError: shapes that do not multiply, an odd ``N``, or a CUDA product the kernel
            does not take.
    """
    _check_product("dense_gemv_silu_mul", x, weight, bias)
    if weight.shape[0] % 2:
        raise ValueError(
            f"dense_gemv_silu_mul: weight rows must be [gate | up] (an even count), got "
            f"{weight.shape[0]}"
        )
    return torch.ops.mmcore.dense_gemv_silu_mul(x, weight, bias)


def _fills_gemv_block(k: int) -> bool:
    """Whether the kernel's 512 threads are at least 7/8 busy over ``k``'s 16-byte chunks (its
    losses to cuBLAS were at k = 2048 and 5504, half and two thirds busy)."""
    chunks = k // 8
    rounds = -(-chunks // _GEMV_THREADS)
    return chunks * 8 >= 7 * _GEMV_THREADS * rounds


def _decode_row_takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether one CUDA row (a batch-1 decode step) goes to the GEMV: a product it takes, with
    its block busy enough to beat cuBLAS."""
    return (
        x.dim() == 2
        and x.shape[0] == 1
        and dense_gemv_takes(x, weight)
        and (bias is None or bias.dtype == x.dtype)
        and _fills_gemv_block(weight.shape[1])
    )


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; one CUDA row (a batch-1 decode step) goes to the GEMV
    where its block is busy enough to beat cuBLAS."""
    if _decode_row_takes(x, weight, bias):
        return torch.ops.mmcore.dense_gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def decode_gate_up_silu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor | None:
    """``silu(gate) * up`` of a ``[gate | up]`` projection in one GEMV for a single CUDA row
    (a batch-1 decode step) where :func:`decode_linear` would take the GEMV; None otherwise
    (the caller runs the projection and the activation as two ops)."""
    if weight.shape[0] % 2 == 0 and _decode_row_takes(x, weight, bias):
        return torch.ops.mmcore.dense_gemv_silu_mul(x, weight, bias)
    return None
