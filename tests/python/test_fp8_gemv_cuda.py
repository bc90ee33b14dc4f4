"""The FP8 weight-only GEMV of decode steps (cpp/kernels/fp8_gemv.cu) on a CUDA GPU: equal to the
float32 reference up to output rounding, for every row count it takes, odd output sizes, strided
activations, bias, CUDA-graph replay; ``fp8_linear`` takes it for up to 8 rows only."""

from __future__ import annotations

import pytest
import torch

from mmcore.kernels import reference
from mmcore.kernels.quant_ops import FP8_GEMV_MAX_ROWS, fp8_gemv, fp8_gemv_takes
from mmcore.layers import fp8

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _weights(n: int, k: int, seed: int):
    gen = torch.Generator("cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.02
    return fp8.quantize_rows(w)  # e4m3 [n, k], float32 [n, 1]


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    # Same products, another summation order: at most an output rounding apart.
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = want.float().abs().amax().clamp(min=1e-3)
    torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=4e-3 * scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", list(range(1, FP8_GEMV_MAX_ROWS + 1)))
@pytest.mark.parametrize(
    ("n", "k"), [(1, 16), (7, 528), (4096, 4096), (11008, 4096), (4096, 11008)]
)
def test_gemv_equals_the_float32_reference(dtype, rows, n, k):
    w, scale = _weights(n, k, seed=n + k)
    x = (torch.randn(rows, k, device="cuda") * 2).to(dtype)
    bias = torch.randn(n, device="cuda").to(dtype) if n % 2 else None
    assert fp8_gemv_takes(x, w)
    _close(fp8_gemv(x, w, scale, bias), reference.fp8_gemv(x, w, scale, bias))


def test_strided_activation_rows_and_the_bias():
    w, scale = _weights(300, 1024, seed=1)
    wide = torch.randn(4, 1024 + 64, device="cuda", dtype=torch.bfloat16)
    x = wide[:, 32 : 32 + 1024]  # rows 16-byte aligned, stride 1088
    bias = torch.randn(300, device="cuda", dtype=torch.bfloat16)
    _close(fp8_gemv(x, w, scale, bias), reference.fp8_gemv(x.contiguous(), w, scale, bias))


def test_replays_in_a_cuda_graph_with_new_inputs():
    w, scale = _weights(2048, 4096, seed=2)
    static = torch.zeros(2, 4096, device="cuda", dtype=torch.bfloat16)
    fp8_gemv(static, w, scale, None)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fp8_gemv(static, w, scale, None)
    for seed in range(3):
        static.copy_(
            torch.randn(2, 4096, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        )
        graph.replay()
        _close(out, reference.fp8_gemv(static, w, scale, None))


def test_fp8_linear_takes_the_gemv_for_decode_batches_only(monkeypatch):
    from mmcore.kernels import quant_ops

    w, scale = _weights(1024, 4096, seed=3)
    calls = []
    real = quant_ops.fp8_gemv
    monkeypatch.setattr(quant_ops, "fp8_gemv", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    for rows in (1, 8, 9, 64):
        x = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
        y = fp8.fp8_linear(x, w, scale.view(-1), None)
        ref = reference.fp8_gemv(x, w, scale, None)
        # The W8A8 path quantises the activations too: a looser bound than the GEMV's.
        bound = 0.1 * (x.float().abs() @ (w.float() * scale).abs().T) + 0.01 * ref.float().abs()
        bound += 1e-2
        assert ((y.float() - ref.float()).abs() <= bound).all()
    assert calls == [1, 8]


def test_products_the_kernel_cannot_take_are_refused_by_name():
    w, scale = _weights(64, 24, seed=4)  # k not a multiple of 16
    x = torch.randn(1, 24, device="cuda", dtype=torch.bfloat16)
    assert not fp8_gemv_takes(x, w)
    with pytest.raises(ValueError, match="fp8_gemv"):
        fp8_gemv(x, w, scale, None)
    # Nor does cuBLASLt's FP8 GEMM: fp8_linear multiplies the dequantised weight.
    dequantised = (w.float() * scale.view(-1, 1)).to(torch.bfloat16)
    want = torch.nn.functional.linear(x, dequantised)
    assert torch.equal(fp8.fp8_linear(x, w, scale.view(-1), None), want)
