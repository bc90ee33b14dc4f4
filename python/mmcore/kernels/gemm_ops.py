"""The skinny GEMM of small-batch decode as a torch custom op, ``F.linear`` as its fallback.

``mmcore::skinny_gemm(x, weight, bias)`` computes ``F.linear(x, weight, bias)``. When
:func:`skinny_gemm_supported` holds (CUDA float16/bfloat16, at most
:data:`SKINNY_GEMM_MAX_ROWS` rows of x, K a multiple of 8, 16-byte aligned rows) it runs the
memory-bound kernel of ``cpp/kernels/skinny_gemm.cu`` (every weight byte read once, float32
accumulation, bias added in float32, one rounding; :func:`mmcore.kernels.reference.skinny_gemm`
is its semantics); any other input goes to ``F.linear`` (cuBLAS on CUDA). The op is functional
and has a fake implementation, so it traces under ``torch.compile`` and replays in CUDA graphs.
:mod:`mmcore.kernels.ops` re-exports the public wrappers.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

#: Most rows of x (tokens of the step) the skinny kernel takes.
SKINNY_GEMM_MAX_ROWS = 8

_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2}


@functools.cache
def _kernels():
    """The CUDA module when it is built with the skinny GEMM, else None."""
    try:
        from mmcore import _kernels
    except ImportError:
        return None
    return _kernels if hasattr(_kernels, "skinny_gemm") else None


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _row_stride(x: torch.Tensor) -> int | None:
    """Elements between consecutive rows of ``x`` seen as ``[-1, K]`` without a copy, or None
    when its leading dims do not collapse to one stride."""
    dims = [(size, stride) for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size != 1]
    if not dims:
        return x.shape[-1]  # one row: the stride is never used
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != inner * size:
            return None
    return dims[-1][1]


def skinny_gemm_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T`` runs on the skinny CUDA kernel (else the op calls ``F.linear``).

    Args:
        x: ``[..., K]`` activations.
        weight: ``[N, K]``.

    Returns:
        True for CUDA tensors on one device, both float16 or both bfloat16, with
        ``1 <= rows of x <= SKINNY_GEMM_MAX_ROWS``, ``K`` a positive multiple of 8, contiguous
        last dims, 16-byte aligned data and row strides, when ``mmcore._kernels`` has the kernel.
        Under ``torch.compile`` tracing the pointer alignment is not known; the op checks it
        again when it runs and falls back to ``F.linear`` for misaligned inputs.
    """
    if not (x.is_cuda and weight.is_cuda and x.device == weight.device):
        return False
    if x.dtype not in _DTYPE_CODES or weight.dtype != x.dtype:
        return False
    if x.dim() < 1 or weight.dim() != 2:
        return False
    k = x.shape[-1]
    if k == 0 or k % 8 != 0 or weight.shape[1] != k or weight.shape[0] == 0:
        return False
    rows = x.numel() // k
    if not 1 <= rows <= SKINNY_GEMM_MAX_ROWS:
        return False
    if x.stride(-1) != 1 or weight.stride(-1) != 1:
        return False
    if weight.stride(0) < k or weight.stride(0) % 8 != 0:
        return False
    x_stride = _row_stride(x)
    if x_stride is None or (rows > 1 and (x_stride < k or x_stride % 8 != 0)):
        return False
    if _kernels() is None:
        return False
    if torch.compiler.is_compiling():
        return True
    return x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0


# ------------------------------------------------------------------------------- custom op


@torch.library.custom_op("mmcore::skinny_gemm", mutates_args=())
def _skinny_gemm_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if not skinny_gemm_supported(x, weight) or (
        bias is not None and (bias.dtype != x.dtype or bias.device != x.device)
    ):
        return F.linear(x, weight, bias)
    k, n = x.shape[-1], weight.shape[0]
    rows = x.numel() // k
    b = None if bias is None else bias.contiguous()
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):
        _kernels().skinny_gemm(
            x=x.data_ptr(), x_stride=_row_stride(x), weight=weight.data_ptr(),
            weight_stride=weight.stride(0), bias=0 if b is None else b.data_ptr(),
            out=out.data_ptr(), out_stride=out.stride(0), m=rows, n=n, k=k,
            dtype=_DTYPE_CODES[x.dtype], stream=_stream(x),
        )  # fmt: skip
    return out.view(*x.shape[:-1], n)


@_skinny_gemm_op.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


# -------------------------------------------------------------------------- public wrapper


def skinny_gemm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, on the skinny CUDA kernel where it applies.

    Args:
        x: ``[..., K]`` activations (rows may be strided; last dim contiguous for the kernel).
        weight: ``[N, K]``, ``nn.Linear`` layout; same dtype as ``x``.
        bias: ``[N]`` of the same dtype, or None.

    Returns:
        New ``[..., N]`` tensor. On the kernel (see :func:`skinny_gemm_supported`): float32
        products and sums, the bias added in float32, one rounding to the dtype.

    Raises:
        ValueError: on shapes or dtypes ``F.linear`` would not take.
    """
    if not x.is_floating_point() or x.dtype != weight.dtype:
        raise ValueError(
            f"skinny_gemm: x and weight must share one floating dtype, got {x.dtype} and "
            f"{weight.dtype}"
        )
    if x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"skinny_gemm: expected x [..., K] and weight [N, K], got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if bias is not None and (
        bias.dtype != x.dtype or bias.dim() != 1 or bias.shape[0] != weight.shape[0]
    ):
        raise ValueError(
            f"skinny_gemm: bias must be [N] = [{weight.shape[0]}] of dtype {x.dtype}, got "
            f"{tuple(bias.shape)} {bias.dtype}"
        )
    return torch.ops.mmcore.skinny_gemm(x, weight, bias)
