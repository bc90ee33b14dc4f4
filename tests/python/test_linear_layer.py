"""The skinny GEMM's CPU side: the Linear layer and the op equal F.linear, the reference is
F.linear's float32-accumulation semantics, the wrapper rejects bad shapes and dtypes, and the
kernel is never chosen for CPU tensors (the CUDA side is tests/python/test_kernels_cuda_gemm.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcore.kernels import gemm_ops, ops, reference
from mmcore.layers.linear import Linear
from mmcore.models.weights import MergedLinear

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 40])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_layer_on_cpu_equals_f_linear(dtype, rows, bias):
    g = _gen(rows)
    layer = Linear(64, 24, bias=bias, dtype=dtype, device=torch.device("cpu"))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(24, 64, generator=g))
        if bias:
            layer.bias.copy_(torch.randn(24, generator=g))
    x = torch.randn(rows, 64, generator=g).to(dtype)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    x3 = x.view(1, rows, 64)  # leading dims pass through
    assert torch.equal(layer(x3), F.linear(x3, layer.weight, layer.bias))


def test_linear_layer_keeps_nn_linear_parameters():
    layer = Linear(16, 8, bias=True, dtype=torch.float32, device=torch.device("cpu"))
    assert isinstance(layer, nn.Linear)
    assert set(dict(layer.named_parameters())) == {"weight", "bias"}
    assert layer.weight.shape == (8, 16)
    merged = MergedLinear(
        16, {"q_proj": 8, "k_proj": 4}, bias=False, dtype=torch.float32, device=torch.device("cpu")
    )
    assert isinstance(merged, Linear) and merged.weight.shape == (12, 16)
    x = torch.randn(2, 16, generator=_gen(1))
    assert torch.equal(merged(x), F.linear(x, merged.weight))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_op_on_cpu_equals_f_linear(dtype, bias):
    g = _gen(7)
    x = torch.randn(5, 40, generator=g).to(dtype)
    w = torch.randn(33, 40, generator=g).to(dtype)
    b = torch.randn(33, generator=g).to(dtype) if bias else None
    assert torch.equal(ops.skinny_gemm(x, w, b), F.linear(x, w, b))
    wide = torch.randn(5, 56, generator=g).to(dtype)
    strided = wide[:, 8:48]  # rows of a wider tensor
    assert torch.equal(ops.skinny_gemm(strided, w, b), F.linear(strided, w, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_reference_equals_f_linear_when_sums_are_exact(dtype, bias):
    """Small integers: every product and partial sum is exact in float32 (and the results are
    exact in the dtype), so the summation order cannot matter and both must agree bit for bit."""
    g = _gen(3)
    x = torch.randint(-4, 5, (6, 128), generator=g).to(dtype)
    w = torch.randint(-4, 5, (50, 128), generator=g).to(dtype)
    b = torch.randint(-8, 9, (50,), generator=g).to(dtype) if bias else None
    assert torch.equal(reference.skinny_gemm(x, w, b), F.linear(x, w, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_rounds_once(dtype):
    """The float32 result is rounded to the dtype once, and the bias is added before it."""
    g = _gen(5)
    x = torch.randn(3, 256, generator=g).to(dtype)
    w = torch.randn(17, 256, generator=g).to(dtype)
    b = torch.randn(17, generator=g).to(dtype)
    want = (x.double() @ w.double().T + b.double()).float().to(dtype)
    got = reference.skinny_gemm(x, w, b)
    assert got.dtype == dtype
    # float32 sums of 256 terms: differs from the float64 sum rounded only at rounding ties.
    assert (got.float() - want.float()).abs().max() <= 2 * torch.finfo(dtype).eps * want.abs().max()
    assert torch.equal(reference.skinny_gemm(x, w), F.linear(x.float(), w.float()).to(dtype))


def test_wrapper_rejects_bad_shapes_and_dtypes():
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    w = torch.randn(8, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="dtype"):
        ops.skinny_gemm(x, w.float())
    with pytest.raises(ValueError, match="floating"):
        ops.skinny_gemm(torch.ones(2, 16, dtype=torch.int32), torch.ones(8, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        ops.skinny_gemm(x, torch.randn(8, 12, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        ops.skinny_gemm(x, torch.randn(8, 16, 1, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        ops.skinny_gemm(torch.tensor(1.0, dtype=torch.bfloat16), w)
    with pytest.raises(ValueError, match="bias"):
        ops.skinny_gemm(x, w, torch.randn(7, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="bias"):
        ops.skinny_gemm(x, w, torch.randn(8, dtype=torch.float32))


def test_kernel_is_not_supported_on_cpu():
    for dtype in DTYPES:
        x = torch.randn(1, 4096).to(dtype)
        w = torch.randn(128, 4096).to(dtype)
        assert not gemm_ops.skinny_gemm_supported(x, w)
        assert not ops.skinny_gemm_supported(x, w)


def test_row_stride_of_collapsed_leading_dims():
    t = torch.empty(2, 3, 40)
    assert gemm_ops._row_stride(t) == 40
    assert gemm_ops._row_stride(t[:, :, :16]) == 40
    assert gemm_ops._row_stride(torch.empty(1, 1, 16)) == 16
    assert gemm_ops._row_stride(torch.empty(4, 40)[:, 8:24].view(2, 2, 16)) == 40
    assert gemm_ops._row_stride(torch.empty(2, 5, 40)[:, :3, :16]) is None  # gap between blocks


def test_fake_op_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, 64, dtype=torch.bfloat16)
        w = torch.empty(100, 64, dtype=torch.bfloat16)
        out = torch.ops.mmcore.skinny_gemm(x, w, None)
        assert out.shape == (3, 100) and out.dtype == torch.bfloat16
        out = torch.ops.mmcore.skinny_gemm(x.view(3, 1, 64), w, None)
        assert out.shape == (3, 1, 100)
