"""The dense GEMV op on the CPU (its reference path) and its argument checks; the CUDA kernel is
tested against the same reference in test_dense_gemv_cuda.py."""

from __future__ import annotations

import pytest
import torch

from mmcore.kernels.gemv_ops import (
    decode_gate_up_silu,
    dense_gemv,
    dense_gemv_silu_mul,
    dense_gemv_takes,
)


def test_cpu_op_is_the_float32_product_rounded_once():
    torch.manual_seed(0)
    x = torch.randn(3, 64).to(torch.bfloat16)
    w = (torch.randn(48, 64) * 0.05).to(torch.bfloat16)
    bias = torch.randn(48).to(torch.bfloat16)
    got = dense_gemv(x, w, bias)
    want = (x.double() @ w.double().T + bias.double()).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.shape == (3, 48)
    torch.testing.assert_close(got.float(), want.float(), rtol=8e-3, atol=1e-3)
    assert not torch.equal(dense_gemv(x, w), got)  # the bias is added


def test_bad_shapes_are_a_value_error():
    w = torch.randn(8, 32).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"x \[R, K\] and weight \[N, K\]"):
        dense_gemv(torch.randn(2, 16).to(torch.bfloat16), w)
    with pytest.raises(ValueError, match=r"bias must be \[8\] torch.bfloat16"):
        dense_gemv(torch.randn(2, 32).to(torch.bfloat16), w, torch.zeros(4, dtype=torch.bfloat16))


def test_cpu_tensors_are_not_offered_to_the_cuda_kernel():
    w = torch.randn(8, 32).to(torch.bfloat16)
    assert not dense_gemv_takes(torch.randn(1, 32).to(torch.bfloat16), w)


def test_cpu_gated_op_is_silu_of_the_gate_times_the_up_half():
    torch.manual_seed(1)
    x = torch.randn(2, 64).to(torch.bfloat16)
    w = (torch.randn(40, 64) * 0.1).to(torch.bfloat16)  # [gate 20 | up 20]
    bias = torch.randn(40).to(torch.bfloat16)
    y = dense_gemv(x, w, bias)
    want = torch.nn.functional.silu(y[:, :20]) * y[:, 20:]
    got = dense_gemv_silu_mul(x, w, bias)
    assert got.shape == (2, 20) and got.dtype == torch.bfloat16
    assert torch.equal(got, want)
    # The up half matters: swapping the halves changes the result.
    assert not torch.equal(dense_gemv_silu_mul(x, torch.cat([w[20:], w[:20]]), None), got)


def test_gated_op_refuses_an_odd_row_count_and_cpu_rows_are_not_fused():
    x = torch.randn(1, 32).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"\[gate \| up\] \(an even count\), got 9"):
        dense_gemv_silu_mul(x, torch.randn(9, 32).to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"x \[R, K\] and weight \[N, K\]"):
        dense_gemv_silu_mul(x, torch.randn(8, 16).to(torch.bfloat16))
    assert decode_gate_up_silu(x, torch.randn(8, 32).to(torch.bfloat16), None) is None
