"""The FP8 weight-only GEMV op on the CPU (its reference path) and its argument checks; the CUDA
kernel is tested against the same reference in test_fp8_gemv_cuda.py."""

from __future__ import annotations

import pytest
import torch

from mmcore.kernels.quant_ops import fp8_gemv, fp8_gemv_takes
from mmcore.layers import fp8


def test_cpu_op_is_the_dequantised_linear_rounded_like_torch():
    torch.manual_seed(0)
    w32 = torch.randn(48, 64) * 0.05
    w, scale = fp8.quantize_rows(w32)
    x = torch.randn(3, 64).to(torch.bfloat16)
    bias = torch.randn(48).to(torch.bfloat16)
    got = fp8_gemv(x, w, scale.view(-1), bias)
    dequant = w.double() * scale.double()
    want = (x.double() @ dequant.T).to(torch.bfloat16) + bias
    assert got.dtype == torch.bfloat16 and got.shape == (3, 48)
    torch.testing.assert_close(got.float(), want.float(), rtol=8e-3, atol=1e-3)
    # The weight's FP8 rounding is all that separates it from the float32 layer.
    torch.testing.assert_close(got.float(), (x.float() @ w32.T + bias.float()), rtol=0.1, atol=0.05)


def test_mismatched_shapes_are_a_value_error():
    w, scale = fp8.quantize_rows(torch.randn(8, 32))
    with pytest.raises(ValueError, match=r"x \[R, K\] and weight \[N, K\]"):
        fp8_gemv(torch.randn(2, 16).to(torch.bfloat16), w, scale, None)


def test_cpu_tensors_are_not_offered_to_the_cuda_kernel():
    w, _ = fp8.quantize_rows(torch.randn(8, 32))
    assert not fp8_gemv_takes(torch.randn(1, 32).to(torch.bfloat16), w)
