"""The skinny GEMM kernel (``mmcore::skinny_gemm``, M <= 8 rows of x) against float64 and against
torch's F.linear on the same GPU (needs a GPU and the built mmcore._kernels).

Tolerance against ``round(x.double() @ w.double().T + b)``: the kernel and the float64 result
are each rounded once to the dtype (half an ulp each, 1 ulp of the output together); before
that the kernel's float32 sum of K products (exact products, tensor-core accumulation, which
may truncate instead of round) has an error of at most about ``lambda * sqrt(K) * u * S`` with
``S = sum_k |x_k w_k| + |b|`` and ``u = 2^-23`` (the probabilistic bound of Higham and Mary for
independent rounding errors; the worst case K * u * S is far looser). ``lambda = 8`` leaves a
wide margin and still catches a lost chunk of K (an error of ~S / sqrt(K / 8)).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from mmcore.kernels import gemm_ops, ops, reference
from mmcore.layers import linear as linear_module
from mmcore.layers.linear import Linear

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEV = "cuda"
DTYPES = [torch.float16, torch.bfloat16]
SHAPES = [
    (12288, 4096),  # Llama-2-7B qkv
    (4096, 4096),  # o_proj
    (22016, 4096),  # gate_up
    (4096, 11008),  # down
    (32000, 4096),  # lm_head
    (100, 64),  # N not a multiple of 16, K below one CTA step
    (257, 136),  # K = 17 chunks: a partial unrolled step
]
LAMBDA = 8.0
MIN_NEAR_FRACTION = 0.99  # outputs within 1 ulp of F.linear


@pytest.fixture(autouse=True)
def _full_precision_cublas(monkeypatch):
    """F.linear with float32 reductions throughout (no half-precision split-K reductions)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction", False)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


@functools.lru_cache(maxsize=2)
def _weights(n: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = _gen(n * 31 + k)
    w = (torch.randn(n, k, generator=gen, device=DEV) * k**-0.5).to(dtype)
    b = (0.5 * torch.randn(n, generator=gen, device=DEV)).to(dtype)
    return w, b


def _x(m: int, k: int, dtype: torch.dtype, gen: torch.Generator, strided: bool) -> torch.Tensor:
    if not strided:
        return torch.randn(m, k, generator=gen, device=DEV).to(dtype)
    wide = torch.randn(m, k + 40, generator=gen, device=DEV).to(dtype)
    return wide[:, 16 : 16 + k]  # rows of a wider tensor (stride k + 40, still 16-byte aligned)


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """16-bit float bits as integers ordered like the values, so differences count ulps."""
    bits = t.view(torch.int16).int()
    return torch.where(bits < 0, -(bits & 0x7FFF), bits)


def _ulp(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The dtype's ulp at the magnitudes of ``v`` (float64), subnormal spacing at the bottom."""
    info = torch.finfo(dtype)
    mantissa_bits = {torch.float16: 10, torch.bfloat16: 7}[dtype]
    _, exponent = torch.frexp(v.abs().clamp_min(info.tiny))
    return torch.ldexp(torch.ones_like(v), exponent - 1 - mantissa_bits)


def _check(x, w, b, out):
    dtype = x.dtype
    k = x.shape[-1]
    exact = x.double() @ w.double().T
    magnitude = x.double().abs() @ w.double().abs().T
    if b is not None:
        exact = exact + b.double()
        magnitude = magnitude + b.double().abs()
    ref = exact.to(dtype)
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    tol = _ulp(exact, dtype) + LAMBDA * k**0.5 * 2.0**-23 * magnitude
    err = (out.double() - exact).abs()
    worst = (err / tol).max().item()
    assert worst <= 1.0, f"error {worst:.2f}x the bound (max abs error {err.max().item():.3e})"

    cublas = F.linear(x, w, b)
    ulps = (_ordered(out) - _ordered(cublas)).abs()
    near = (ulps <= 1).double().mean().item()
    assert near >= MIN_NEAR_FRACTION, f"only {near:.4f} of outputs within 1 ulp of F.linear"


def test_gemm_kernel_is_built():
    assert gemm_ops._kernels() is not None, "mmcore._kernels lacks skinny_gemm"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_skinny_gemm_matches_float64_and_cublas(dtype, n, k, bias, strided):
    w, b = _weights(n, k, dtype)
    b = b if bias else None
    gen = _gen(n + k + bias + 2 * strided)
    for m in range(1, gemm_ops.SKINNY_GEMM_MAX_ROWS + 1):
        x = _x(m, k, dtype, gen, strided)
        assert gemm_ops.skinny_gemm_supported(x, w)
        _check(x, w, b, ops.skinny_gemm(x, w, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(4096, 4096), (257, 136), (4096, 11008)])
def test_skinny_gemm_is_exact_when_the_sums_are(dtype, n, k):
    """Small integers: all products and partial sums are exact in float32, so the order and the
    accumulator's rounding cannot matter and the kernel must equal the reference bit for bit
    (this pins the fragment layout: a misplaced K chunk or row changes integer results)."""
    gen = _gen(n + k)
    w = torch.randint(-2, 3, (n, k), generator=gen, device=DEV).to(dtype)
    b = torch.randint(-64, 65, (n,), generator=gen, device=DEV).to(dtype)
    for m in range(1, 9):
        x = torch.randint(-2, 3, (m, k), generator=gen, device=DEV).to(dtype)
        assert torch.equal(ops.skinny_gemm(x, w, b), reference.skinny_gemm(x, w, b))
        assert torch.equal(ops.skinny_gemm(x, w), reference.skinny_gemm(x, w))


def test_leading_dims_and_one_dim_x():
    w, b = _weights(257, 136, torch.bfloat16)
    gen = _gen(5)
    x = torch.randn(2, 3, 136, generator=gen, device=DEV).to(torch.bfloat16)
    assert gemm_ops.skinny_gemm_supported(x, w)
    out = ops.skinny_gemm(x, w, b)
    assert out.shape == (2, 3, 257)
    assert torch.equal(out.view(6, 257), ops.skinny_gemm(x.view(6, 136), w, b))
    out1 = ops.skinny_gemm(x[0, 0], w, b)
    assert out1.shape == (257,)
    assert torch.equal(out1, ops.skinny_gemm(x[0, :1], w, b)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_unsupported_inputs_fall_back_to_f_linear(dtype):
    gen = _gen(11)
    w = torch.randn(96, 64, generator=gen, device=DEV).to(dtype)
    b = torch.randn(96, generator=gen, device=DEV).to(dtype)
    flat = torch.randn(4 * 64 + 1, generator=gen, device=DEV).to(dtype)
    cases = [
        torch.randn(9, 64, generator=gen, device=DEV).to(dtype),  # M = 9
        flat[1:].view(4, 64),  # misaligned rows
        torch.randn(4, 72, generator=gen, device=DEV).to(dtype)[:, 1:65],  # odd row offset
    ]
    for x in cases:
        assert not gemm_ops.skinny_gemm_supported(x, w)
        assert torch.equal(ops.skinny_gemm(x, w, b), F.linear(x, w, b))
    w_odd = torch.randn(96, 60, generator=gen, device=DEV).to(dtype)  # K % 8 != 0
    x_odd = torch.randn(2, 60, generator=gen, device=DEV).to(dtype)
    assert not gemm_ops.skinny_gemm_supported(x_odd, w_odd)
    assert torch.equal(ops.skinny_gemm(x_odd, w_odd, b), F.linear(x_odd, w_odd, b))


def test_launcher_rejects_bad_arguments():
    kernels = gemm_ops._kernels()
    x = torch.zeros(9, 64, dtype=torch.bfloat16, device=DEV)
    w = torch.zeros(16, 64, dtype=torch.bfloat16, device=DEV)
    out = torch.empty(9, 16, dtype=torch.bfloat16, device=DEV)
    stream = torch.cuda.current_stream().cuda_stream

    def call(**overrides):
        args = dict(
            x=x.data_ptr(), x_stride=64, weight=w.data_ptr(), weight_stride=64, bias=0,
            out=out.data_ptr(), out_stride=16, m=1, n=16, k=64, dtype=2, stream=stream,
        )  # fmt: skip
        args.update(overrides)
        kernels.skinny_gemm(**args)

    call()  # valid
    for overrides, message in [
        (dict(m=9), "1..8"),
        (dict(m=0), "1..8"),
        (dict(k=60, x_stride=60, weight_stride=60), "multiple of 8"),
        (dict(dtype=0), "float16 or bfloat16"),
        (dict(x=x.data_ptr() + 2), "aligned"),
        (dict(m=2, x_stride=36), "x row stride"),
        (dict(weight_stride=32), "weight row stride"),
        (dict(n=0), "positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            call(**overrides)
    torch.cuda.synchronize()


def test_skinny_gemm_replays_in_cuda_graph():
    cases = []
    gen = _gen(3)
    for n, k, m in [(4096, 4096, 1), (257, 136, 5), (4096, 11008, 8)]:
        w, b = _weights(n, k, torch.bfloat16)
        cases.append((torch.randn(m, k, generator=gen, device=DEV).to(torch.bfloat16), w, b))

    def step():
        return [ops.skinny_gemm(x, w, b) for x, w, b in cases]

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    for x, _, _ in cases:  # new activations in the captured buffers
        x.copy_(torch.randn(x.shape, generator=gen, device=DEV))
    graph.replay()
    for got, want in zip(outs, step()):
        assert torch.equal(got, want)
    graph.replay()  # deterministic: replays repeat bit for bit
    for got, want in zip(outs, step()):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_skinny_gemm_compile_fullgraph(backend):
    if backend == "inductor":
        pytest.importorskip("triton")
    w, b = _weights(257, 136, torch.float16)
    x = torch.randn(3, 136, generator=_gen(9), device=DEV).to(torch.float16)

    def fn(x, w, b):
        return ops.skinny_gemm(x, w, b) * 2, ops.skinny_gemm(x[:1], w)

    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    for got, want in zip(compiled(x, w, b), fn(x, w, b)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_layer_uses_the_kernel_up_to_eight_rows(monkeypatch, bias):
    calls = []
    real = linear_module.skinny_gemm

    def counting(x, weight, b=None):
        calls.append(x.shape)
        return real(x, weight, b)

    monkeypatch.setattr(linear_module, "skinny_gemm", counting)
    layer = Linear(4096, 1024, bias=bias, dtype=torch.bfloat16, device=torch.device(DEV))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(1024, 4096, generator=_gen(1), device=DEV) * 0.02)
        if bias:
            layer.bias.copy_(torch.randn(1024, generator=_gen(2), device=DEV))
    gen = _gen(4)
    with torch.no_grad():
        for m in range(1, 9):
            x = torch.randn(m, 4096, generator=gen, device=DEV).to(torch.bfloat16)
            assert torch.equal(layer(x), ops.skinny_gemm(x, layer.weight, layer.bias))
        assert len(calls) == 8
        x = torch.randn(9, 4096, generator=gen, device=DEV).to(torch.bfloat16)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        assert len(calls) == 8  # nine rows: F.linear
        layer_fp32 = Linear(64, 32, bias=bias, dtype=torch.float32, device=torch.device(DEV))
        x32 = torch.randn(2, 64, generator=gen, device=DEV)
        assert torch.equal(layer_fp32(x32), F.linear(x32, layer_fp32.weight, layer_fp32.bias))
        assert len(calls) == 8  # float32: F.linear
