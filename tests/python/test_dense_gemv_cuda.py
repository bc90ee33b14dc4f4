"""The dense GEMV of decode steps (cpp/kernels/dense_gemv.cu) on a CUDA GPU: equal to the
float64 product up to one output rounding (plus float32 summation error), for every row count
it takes, odd and wide shapes (several CTA waves, k in every chunk count), strided activations
and weights, bias, CUDA-graph replay; products it cannot take are refused by name. Its gated
epilogue (silu(gate) * up) is bit-equal to the GEMV followed by the silu_and_mul kernel."""

from __future__ import annotations

import pytest
import torch

from mmcore.kernels.gemv_ops import (
    DENSE_GEMV_MAX_K,
    DENSE_GEMV_MAX_ROWS,
    decode_gate_up_silu,
    dense_gemv,
    dense_gemv_silu_mul,
    dense_gemv_takes,
)
from mmcore.kernels.ops import silu_and_mul

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _operands(rows, n, k, dtype, seed):
    gen = torch.Generator("cuda").manual_seed(seed)
    x = (torch.randn(rows, k, device="cuda", generator=gen) * 2).to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=gen) * 0.02).to(dtype)
    return x, w


def _check(got, x, w, bias):
    exact = x.double() @ w.double().T + (bias.double() if bias is not None else 0)
    want = exact.to(x.dtype)
    assert got.dtype == x.dtype and got.shape == want.shape
    # One rounding to the output dtype, plus float32 summation error over k products.
    eps = torch.finfo(x.dtype).eps
    magnitude = x.double().abs() @ w.double().abs().T
    bound = eps * exact.abs() + 2.0**-20 * magnitude + 1e-30
    assert ((got.double() - exact).abs() <= bound).all()
    # Almost always the correctly rounded value (a float32 sum can land across a rounding
    # boundary: at most one output of a narrow product, 2% of a wide one).
    assert int((got != want).sum()) <= max(1, 0.02 * want.numel())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", list(range(1, DENSE_GEMV_MAX_ROWS + 1)))
@pytest.mark.parametrize(
    ("n", "k"),
    [(1, 8), (7, 520), (4096, 4096), (4096, 11008), (12288, 4096), (22016, 4096), (3584, 18944),
     (100, 28672), (33, DENSE_GEMV_MAX_K)],
)  # fmt: skip
def test_gemv_equals_the_float64_product_rounded(dtype, rows, n, k):
    x, w = _operands(rows, n, k, dtype, seed=n + k + rows)
    gen = torch.Generator("cuda").manual_seed(n)
    bias = (torch.randn(n, device="cuda", generator=gen) * 0.1).to(dtype) if n % 2 else None
    assert dense_gemv_takes(x, w)
    _check(dense_gemv(x, w, bias), x, w, bias)


def test_strided_activation_rows_and_weight_rows():
    x_wide, w_wide = _operands(3, 300, 1024 + 64, torch.bfloat16, seed=1)
    x, w = x_wide[:, 32 : 32 + 1024], w_wide[:, 64 : 64 + 1024]  # 16-byte aligned, strided
    assert dense_gemv_takes(x, w)
    _check(dense_gemv(x, w), x, w, None)


def _captured(fn):
    """``(graph, output)`` of ``fn()`` captured in a CUDA graph after a warm-up call."""
    fn()  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def test_replays_in_a_cuda_graph_with_new_inputs():
    _, w = _operands(1, 4096, 4096, torch.float16, seed=2)
    static = torch.zeros(2, 4096, device="cuda", dtype=torch.float16)
    graph, out = _captured(lambda: dense_gemv(static, w))
    for seed in range(3):
        static.copy_(_operands(2, 1, 4096, torch.float16, seed=10 + seed)[0])
        graph.replay()
        _check(out, static, w, None)


def test_products_the_kernel_cannot_take_are_refused_by_name():
    x, w = _operands(DENSE_GEMV_MAX_ROWS + 1, 64, 64, torch.bfloat16, seed=3)
    assert not dense_gemv_takes(x, w)
    with pytest.raises(ValueError, match="not a product the CUDA kernel takes"):
        dense_gemv(x, w)
    with pytest.raises(ValueError, match="not a product the CUDA kernel takes"):
        dense_gemv(x[:1], w.half())  # weight dtype differs
    with pytest.raises(ValueError, match="not a product the CUDA kernel takes"):
        dense_gemv(torch.zeros(1, 12, device="cuda", dtype=torch.bfloat16), w[:, :12])


def _ran_gemv(fn) -> bool:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return any("dense_gemv_kernel" in e.name for e in prof.events())


def test_linear_layers_take_the_gemv_for_one_busy_row_only():
    from mmcore.kernels.gemv_ops import decode_linear

    _, w = _operands(1, 512, 4096, torch.bfloat16, seed=4)
    bias = torch.randn(512, device="cuda").to(torch.bfloat16)
    for rows in (1, 2, 4):
        x, _ = _operands(rows, 1, 4096, torch.bfloat16, seed=rows)
        _check(decode_linear(x, w, bias), x, w, bias)
        # Batch-1 decode rows only: cuBLAS is as fast from two rows on.
        assert _ran_gemv(lambda x=x: decode_linear(x, w, bias)) == (rows == 1)
    # k = 2048 keeps half the kernel's threads idle: cuBLAS was faster there.
    x, w = _operands(1, 512, 2048, torch.bfloat16, seed=6)
    assert not _ran_gemv(lambda: decode_linear(x, w, None))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", list(range(1, DENSE_GEMV_MAX_ROWS + 1)))
@pytest.mark.parametrize(
    ("inner", "k"),
    [(1, 8), (13, 520), (11008, 4096), (18944, 3584), (4864, 896), (700, 28672), (3000, 12288)],
)  # fmt: skip
def test_gated_epilogue_equals_the_gemv_then_silu_and_mul(dtype, rows, inner, k):
    x, w = _operands(rows, 2 * inner, k, dtype, seed=inner + k + rows)
    gen = torch.Generator("cuda").manual_seed(inner)
    bias = (
        (torch.randn(2 * inner, device="cuda", generator=gen) * 0.5).to(dtype)
        if inner % 2
        else None
    )
    got = dense_gemv_silu_mul(x, w, bias)
    assert got.shape == (rows, inner) and got.dtype == dtype
    assert torch.equal(got, silu_and_mul(dense_gemv(x, w, bias)))


def test_gated_epilogue_replays_in_a_cuda_graph():
    _, w = _operands(1, 2 * 1536, 4096, torch.bfloat16, seed=7)
    static = torch.zeros(1, 4096, device="cuda", dtype=torch.bfloat16)
    graph, out = _captured(lambda: dense_gemv_silu_mul(static, w))
    for seed in range(3):
        static.copy_(_operands(1, 1, 4096, torch.bfloat16, seed=20 + seed)[0])
        graph.replay()
        assert torch.equal(out, silu_and_mul(dense_gemv(static, w)))


def test_gated_mlp_fuses_the_activation_for_one_busy_row_only():
    _, w = _operands(1, 2 * 512, 4096, torch.bfloat16, seed=8)
    x1, _ = _operands(1, 1, 4096, torch.bfloat16, seed=9)
    assert torch.equal(decode_gate_up_silu(x1, w, None), silu_and_mul(dense_gemv(x1, w)))
    x2, _ = _operands(2, 1, 4096, torch.bfloat16, seed=10)
    assert decode_gate_up_silu(x2, w, None) is None
    _, w_narrow = _operands(1, 2 * 512, 2048, torch.bfloat16, seed=11)
    assert decode_gate_up_silu(x1[:, :2048], w_narrow, None) is None
