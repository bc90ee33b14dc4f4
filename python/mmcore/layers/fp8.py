"""FP8 (e4m3) W8A8 GEMM pieces: weight and activation quantisers and the scaled matmul.

Scales are float32 and multiply back: ``x ~= x_fp8 * scale``. Weights carry one scale per output
channel, activations one per token (dynamic, computed each call) or one per tensor (static, from
the checkpoint). The GEMM is ``torch._scaled_mm`` (cuBLASLt / CUTLASS on sm89+; torch's CPU
backend runs the same call, so the path is tested without a GPU)::

    x [M, K] --per-token amax--> x_fp8, scale_a [M, 1]
    W [N, K] --per-row amax----> W_fp8, scale_b [1, N]
    y = _scaled_mm(x_fp8, W_fp8.T, scale_a, scale_b) (+ bias)
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Smallest scale: an all-zero row would otherwise divide by zero (vLLM uses the same floor).
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)
MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with FP8 tensor cores


def check_fp8_device(device: torch.device | str) -> None:
    """Raise unless ``device`` can run FP8 GEMMs (CPU, or CUDA compute capability >= 8.9).

    Raises:
        ValueError: naming the GPU's compute capability.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise ValueError(
            f"FP8 weights need a GPU of compute capability >= 8.9 (Ada, Hopper or newer); "
            f"{device} ({name}) is sm{capability[0]}{capability[1]}"
        )


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """float32 scale that maps ``amax`` onto the largest e4m3 value."""
    return (amax.float() / FP8_MAX).clamp_(min=MIN_SCALE)


def quantize_with_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x / scale`` rounded to e4m3 (saturating; ``scale`` broadcasts against ``x``)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token / per-output-channel) quantisation of a 2-D tensor: one fused kernel
    on CUDA (it runs before every GEMM), the same torch ops on the CPU
    (:func:`mmcore.kernels.quant_ops.per_token_quant_fp8`).

    Returns:
        ``(x_fp8 [R, C], scale float32 [R, 1])``.
    """
    from mmcore.kernels.quant_ops import per_token_quant_fp8

    return per_token_quant_fp8(x, MIN_SCALE)


def dequantize_blocks(
    weight: torch.Tensor, block_scale: torch.Tensor, block: tuple[int, int]
) -> torch.Tensor:
    """Float32 weight from a block-wise FP8 weight ``[N, K]`` and its ``[ceil(N/bn), ceil(K/bk)]``
    scales (transformers' ``weight_block_size``)."""
    bn, bk = block
    rows, cols = weight.shape
    scale = block_scale.float().repeat_interleave(bn, 0)[:rows].repeat_interleave(bk, 1)[:, :cols]
    return weight.float() * scale


def _gemm_out_dtype(out_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    # Row-wise scaled GEMMs on CUDA write float16 or bfloat16 (torch >= 2.11); float32 models
    # take bfloat16 and a cast. Writing a float16 model's dtype directly saves a copy of every
    # output (1.2-1.4x a prefill GEMM on an H200) and bfloat16's rounding.
    if device.type == "cuda" and out_dtype not in (torch.float16, torch.bfloat16):
        return torch.bfloat16
    return out_dtype


#: ``torch._scaled_mm`` needs both the input and output features in multiples of this.
SCALED_MM_ALIGN = 16


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, W, bias)`` with ``W = weight * weight_scale[:, None]`` in FP8.

    On CUDA, up to ``FP8_GEMV_MAX_ROWS`` rows (decode steps) take the weight-only GEMV (the
    activations stay in their dtype, ``input_scale`` is not needed); more rows are quantised
    per token (or with ``input_scale``) for ``torch._scaled_mm``. Layers whose features are
    not multiples of 16 (which ``_scaled_mm`` refuses) multiply the dequantised weight.

    Args:
        x: activations ``[..., K]`` in the model dtype (the output has it too).
        weight: e4m3 ``[N, K]``.
        weight_scale: float32 ``[N]``, one scale per output channel.
        bias: ``[N]`` in the model dtype, or None.
        input_scale: float32 scalar of static activation quantisation; None quantises each
            token with its own scale (dynamic).

    Returns:
        ``[..., N]`` in ``x.dtype``.
    """
    from mmcore.kernels.quant_ops import fp8_gemv, fp8_gemv_takes

    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] == 0:  # e.g. a rank with no images this step: nothing to scale
        return x.new_empty(*lead, weight.shape[0])
    if fp8_gemv_takes(x2, weight):
        # Decode-sized batches: read the e4m3 weight once, activations unquantised (W8A16).
        return fp8_gemv(x2, weight, weight_scale, bias).reshape(*lead, weight.shape[0])
    if weight.shape[0] % SCALED_MM_ALIGN or weight.shape[1] % SCALED_MM_ALIGN:
        # cuBLASLt's FP8 GEMM takes multiples of 16 only: this layer runs dequantised (W8A16).
        w = (weight.to(torch.float32) * weight_scale.view(-1, 1)).to(x.dtype)
        return torch.nn.functional.linear(x2, w, bias).reshape(*lead, weight.shape[0])
    if input_scale is None:
        x_fp8, scale_a = quantize_rows(x2)
    else:
        x_fp8 = quantize_with_scale(x2, input_scale)
        scale_a = input_scale.reshape(1, 1).repeat(x2.shape[0], 1)
    out = torch._scaled_mm(
        x_fp8,
        weight.t(),
        scale_a=scale_a,
        scale_b=weight_scale.view(1, -1),
        out_dtype=_gemm_out_dtype(x.dtype, x.device),
    )
    out = out.to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*lead, weight.shape[0])
