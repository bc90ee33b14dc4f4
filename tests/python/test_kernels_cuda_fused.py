"""Fused elementwise CUDA kernels (RMSNorm, add + RMSNorm, SiLU-and-mul, rope) against the
pure-torch references run with torch on the same GPU (needs a GPU and the built mmcore._kernels).

silu_and_mul and rotary_embedding must match bit for bit, and rope fused with the KV-cache
write must match the rotary kernel followed by reshape_and_cache bit for bit. The norms sum x^2 in another order
than torch's mean, so a row's float32 scale can differ by an ulp; the rounded output then moves
by an ulp on rare elements (two where the weight product lands on a binade edge; a CPU
emulation of the two orders gives ~3e-5 of elements in float16, ~1e-6 in bfloat16).
"""

from __future__ import annotations

import pytest
import torch

from mmcore.kernels import fused_ops, ops, reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEV = "cuda"
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
TOKENS = [1, 3, 64, 1000, 8192]
MAX_NORM_ULPS = 2
MAX_NORM_MISMATCH = 1e-3  # fraction of elements off by any ulp (about 30x the emulated rate)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """Float bits as integers ordered like the values, so differences count ulps."""
    if t.element_size() == 2:
        bits, sign = t.view(torch.int16).int(), 0x8000
    else:
        bits, sign = t.view(torch.int32).long(), 0x80000000
    return torch.where(bits < 0, -(bits & (sign - 1)), bits)


def _assert_norm_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    if out.dtype == torch.float32:  # every element carries the scale's last-bit difference
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        return
    ulps = (_ordered(out) - _ordered(ref)).abs()
    mismatched = int((ulps > 0).sum())
    assert ulps.max().item() <= MAX_NORM_ULPS, f"max {ulps.max().item()} ulps"
    assert mismatched <= max(1, MAX_NORM_MISMATCH * out.numel()), (
        f"{mismatched} of {out.numel()} elements differ ({mismatched / out.numel():.2e})"
    )


def _rows(num_tokens, hidden, dtype, gen, layout, scale=1.0):
    """``[T, hidden]`` rows: contiguous, a slice of wider rows, or a view 2 bytes off 16."""
    if layout == "contiguous":
        return (scale * torch.randn(num_tokens, hidden, generator=gen, device=DEV)).to(dtype)
    if layout == "strided":
        wide = scale * torch.randn(num_tokens, hidden + 24, generator=gen, device=DEV)
        return wide.to(dtype)[:, 8 : 8 + hidden]
    flat = scale * torch.randn(num_tokens * hidden + 1, generator=gen, device=DEV)
    return flat.to(dtype)[1:].view(num_tokens, hidden)  # misaligned: the scalar path


def test_fused_kernels_are_built():
    assert fused_ops._kernels() is not None, "mmcore._kernels lacks the fused kernels"


# ----------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKENS)
@pytest.mark.parametrize("hidden", [64, 100, 4096, 5120])
def test_rms_norm(dtype, num_tokens, hidden):
    gen = _gen(num_tokens * 7 + hidden)
    x = _rows(num_tokens, hidden, dtype, gen, "contiguous", scale=3.0)
    w = torch.randn(hidden, generator=gen, device=DEV).to(dtype)
    _assert_norm_matches(ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKENS)
@pytest.mark.parametrize("hidden", [64, 100, 4096, 5120])
def test_fused_add_rms_norm(dtype, num_tokens, hidden):
    gen = _gen(num_tokens * 11 + hidden)
    x = _rows(num_tokens, hidden, dtype, gen, "contiguous")
    res = _rows(num_tokens, hidden, dtype, gen, "contiguous", scale=4.0)
    w = torch.randn(hidden, generator=gen, device=DEV).to(dtype)
    x_before, res_before = x.clone(), res.clone()
    normed, summed = ops.fused_add_rms_norm(x, res, w, 1e-5)
    ref_normed, ref_summed = reference.fused_add_rms_norm(x, res, w, 1e-5)
    assert torch.equal(summed, ref_summed)
    _assert_norm_matches(normed, ref_normed)
    assert torch.equal(x, x_before) and torch.equal(res, res_before)  # functional


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["strided", "misaligned"])
@pytest.mark.parametrize("hidden", [4096, 104])
def test_norms_on_strided_and_misaligned_rows(dtype, layout, hidden):
    gen = _gen(hidden + len(layout))
    x = _rows(300, hidden, dtype, gen, layout)
    res = _rows(300, hidden, dtype, gen, layout)
    w = torch.randn(hidden, generator=gen, device=DEV).to(dtype)
    _assert_norm_matches(ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    normed, summed = ops.fused_add_rms_norm(x, res, w, 1e-6)
    ref_normed, ref_summed = reference.fused_add_rms_norm(x, res, w, 1e-6)
    assert torch.equal(summed, ref_summed)
    _assert_norm_matches(normed, ref_normed)
    rows = torch.randperm(300, generator=gen, device=DEV)[:77]  # hidden[rows], as a layer does
    _assert_norm_matches(ops.rms_norm(x[rows], w, 1e-6), reference.rms_norm(x[rows], w, 1e-6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", [1, 1000])
@pytest.mark.parametrize("hidden", [100, 4096, 5120])
def test_norms_are_exact_when_the_sum_is(dtype, num_tokens, hidden):
    """Multiples of 1/16 in [-1, 1]: every partial sum of squares is exact in float32, so the
    summation order cannot matter and everything else must match bit for bit."""
    gen = _gen(hidden + num_tokens)

    def grid_values(*shape):
        return (torch.randint(-16, 17, shape, generator=gen, device=DEV) / 16).to(dtype)

    x, res = grid_values(num_tokens, hidden), grid_values(num_tokens, hidden)
    w = torch.randn(hidden, generator=gen, device=DEV).to(dtype)
    for eps in (1e-6, 1e-5, 0.1):
        assert torch.equal(ops.rms_norm(x, w, eps), reference.rms_norm(x, w, eps))
        got = ops.fused_add_rms_norm(x, res, w, eps)
        want = reference.fused_add_rms_norm(x, res, w, eps)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------------------ activation


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKENS)
@pytest.mark.parametrize("intermediate", [11008, 13824, 100, 13])
def test_silu_and_mul(dtype, num_tokens, intermediate):
    gen = _gen(num_tokens * 3 + intermediate)
    x = _rows(num_tokens, 2 * intermediate, dtype, gen, "contiguous", scale=4.0)
    out = ops.silu_and_mul(x)
    assert out.shape == (num_tokens, intermediate)
    assert torch.equal(out, reference.silu_and_mul(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["strided", "misaligned"])
def test_silu_and_mul_strided_and_misaligned(dtype, layout):
    gen = _gen(len(layout))
    x = _rows(257, 2 * 11008, dtype, gen, layout, scale=4.0)
    assert torch.equal(ops.silu_and_mul(x), reference.silu_and_mul(x))


def test_silu_and_mul_extreme_values():
    special = [0.0, -0.0, 1e-8, -1e-8, 20.0, -20.0, 88.0, -88.0, 100.0, -100.0, 65000.0]
    for dtype in DTYPES:
        gate = torch.tensor(special, device=DEV).to(dtype)
        x = torch.cat((gate, torch.full_like(gate, 1.5))).view(1, -1)
        assert torch.equal(ops.silu_and_mul(x), reference.silu_and_mul(x))


# ---------------------------------------------------------------------------------- rotary


def _qkv_views(num_tokens, hq, hk, d, dtype, gen):
    """q and k as strided views of one fused qkv projection output ``[T, (hq + 2 hk) * d]``."""
    qkv = torch.randn(num_tokens, (hq + 2 * hk) * d, generator=gen, device=DEV).to(dtype)
    q = qkv[:, : hq * d].view(num_tokens, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(num_tokens, hk, d)
    return q, k


def _cache(d, max_positions, dtype, scaling=1.0):
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32, device=DEV) / d))
    return reference.rotary_cos_sin_cache(inv_freq, max_positions, scaling, dtype)


def _assert_rope_matches(positions, q, k, cache):
    q_out, k_out = ops.rotary_embedding(positions, q, k, cache)
    q_ref, k_ref = reference.rotary_embedding(positions, q, k, cache)
    assert q_out.is_contiguous() and k_out.is_contiguous()
    assert torch.equal(q_out, q_ref) and torch.equal(k_out, k_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens", TOKENS)
@pytest.mark.parametrize("d,hq,hk", [(64, 8, 8), (80, 8, 2), (128, 32, 8), (128, 32, 32)])
def test_rotary_embedding_on_qkv_views(dtype, num_tokens, d, hq, hk):
    gen = _gen(num_tokens + d + hq + hk)
    q, k = _qkv_views(num_tokens, hq, hk, d, dtype, gen)
    cache = _cache(d, 16384, dtype)
    positions = torch.randint(0, 16384, (num_tokens,), generator=gen, device=DEV)  # any order
    _assert_rope_matches(positions, q, k, cache)
    _assert_rope_matches(positions.to(torch.int32), q, k, cache)
    _assert_rope_matches(positions, q.contiguous(), k.contiguous(), cache)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [20, 6, 128])
def test_rotary_embedding_scalar_path(dtype, d):
    """Head dims whose half is not a vector multiple, and a misaligned query."""
    gen = _gen(d)
    q, k = _qkv_views(100, 4, 2, d, dtype, gen)
    flat = torch.randn(100 * 4 * d + 1, generator=gen, device=DEV).to(dtype)
    q_misaligned = flat[1:].view(100, 4, d)
    cache = _cache(d, 512, dtype, scaling=1.25)
    positions = torch.randperm(512, generator=gen, device=DEV)[:100]
    _assert_rope_matches(positions, q, k, cache)
    _assert_rope_matches(positions, q_misaligned, k, cache)


# ------------------------------------------------------------- rotary + KV-cache write fused


ROPE_CACHE_BLOCKS, ROPE_CACHE_BLOCK_SIZE = 64, 16


def _kv_caches(hk, d, dtype, gen, misaligned=False):
    """Random ``[blocks, block_size, hk, d]`` K/V caches (a skipped slot keeps its old row);
    ``misaligned``: views one element off a 16-byte boundary (the scalar path)."""
    shape = (ROPE_CACHE_BLOCKS, ROPE_CACHE_BLOCK_SIZE, hk, d)
    n = ROPE_CACHE_BLOCKS * ROPE_CACHE_BLOCK_SIZE * hk * d
    off = 1 if misaligned else 0
    return tuple(
        torch.randn(n + off, generator=gen, device=DEV).to(dtype)[off:].view(shape)
        for _ in range(2)
    )


def _slots(num_tokens, gen):
    """Distinct slots in random order, every third token skipped (-1), one past the cache."""
    slots = torch.randperm(ROPE_CACHE_BLOCKS * ROPE_CACHE_BLOCK_SIZE, generator=gen, device=DEV)
    slots = slots[:num_tokens].clone()
    slots[::3] = -1
    if num_tokens > 1:
        slots[1] = ROPE_CACHE_BLOCKS * ROPE_CACHE_BLOCK_SIZE + 5  # block >= num_blocks: skipped
    return slots


def _assert_fused_matches_two_ops(positions, q, k, v, cos_sin, caches, slots, section=None):
    """The fused kernel against the rotary kernel then reshape_and_cache, bit for bit."""
    kc, vc = caches
    kc_ref, vc_ref = kc.clone(), vc.clone()
    if section is None:
        q_ref, k_ref = ops.rotary_embedding(positions, q, k, cos_sin)
    else:
        q_ref, k_ref = ops.mrope_rotary_embedding(positions, q, k, cos_sin, section)
    ops.reshape_and_cache(k_ref, v, kc_ref, vc_ref, slots)
    before = kc.clone()
    q_out = ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, kc, vc, slots, section)
    assert q_out.is_contiguous()
    assert torch.equal(q_out.view(torch.int16), q_ref.view(torch.int16))
    assert torch.equal(kc.view(torch.int16), kc_ref.view(torch.int16))
    assert torch.equal(vc.view(torch.int16), vc_ref.view(torch.int16))
    assert not torch.equal(kc, before) or bool((slots < 0).all())  # the op wrote something


def test_rope_cache_kernel_is_built():
    assert hasattr(fused_ops._kernels(), "rotary_embedding_and_cache")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_tokens", [1, 5, 300])
@pytest.mark.parametrize("d,hq,hk", [(64, 8, 8), (80, 8, 2), (128, 32, 8), (128, 32, 32)])
def test_rope_cache_fused_equals_two_ops(dtype, num_tokens, d, hq, hk):
    gen = _gen(num_tokens * 3 + d + hq + hk)
    qkv = torch.randn(num_tokens, (hq + 2 * hk) * d, generator=gen, device=DEV).to(dtype)
    q = qkv[:, : hq * d].view(num_tokens, hq, d)  # strided views of one qkv projection
    k = qkv[:, hq * d : (hq + hk) * d].view(num_tokens, hk, d)
    v = qkv[:, (hq + hk) * d :].view(num_tokens, hk, d)
    cos_sin = _cache(d, 4096, dtype)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen, device=DEV)
    slots = _slots(num_tokens, gen)
    assert fused_ops.rope_cache_kernel_applies(q, k, v, cos_sin, *_kv_caches(hk, d, dtype, gen))
    _assert_fused_matches_two_ops(positions, q, k, v, cos_sin, _kv_caches(hk, d, dtype, gen), slots)
    positions32 = positions.to(torch.int32)
    _assert_fused_matches_two_ops(
        positions32, q, k, v, cos_sin, _kv_caches(hk, d, dtype, gen), slots
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("section", [[16, 24, 24], [12, 8, 12], [10, 10, 12]])
def test_rope_cache_fused_mrope_equals_two_ops(dtype, section):
    """M-RoPE: Qwen2-VL's sections, ones that split 16-byte vectors (half vectors) and ones
    that split those too (scalars)."""
    d = 2 * sum(section)
    gen = _gen(sum(section[:2]))
    q, k = _qkv_views(77, 8, 2, d, dtype, gen)
    v = torch.randn(77, 2, d, generator=gen, device=DEV).to(dtype)
    cos_sin = _cache(d, 2048, dtype)
    positions = torch.randint(0, 2048, (3, 77), generator=gen, device=DEV)
    caches = _kv_caches(2, d, dtype, gen)
    _assert_fused_matches_two_ops(positions, q, k, v, cos_sin, caches, _slots(77, gen), section)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "case", ["misaligned_query", "misaligned_value", "misaligned_cache", "d20"]
)
def test_rope_cache_fused_scalar_path(dtype, case):
    """Rows no 16-byte vector fits: the scalar kernel, still equal to the two ops."""
    d = 20 if case == "d20" else 128
    gen = _gen(d + len(case))
    q, k = _qkv_views(50, 4, 2, d, dtype, gen)
    v = torch.randn(50, 2, d, generator=gen, device=DEV).to(dtype)
    if case == "misaligned_query":
        q = torch.randn(50 * 4 * d + 1, generator=gen, device=DEV).to(dtype)[1:].view(50, 4, d)
    if case == "misaligned_value":
        v = torch.randn(50 * 2 * d + 1, generator=gen, device=DEV).to(dtype)[1:].view(50, 2, d)
    caches = _kv_caches(2, d, dtype, gen, misaligned=case == "misaligned_cache")
    cos_sin = _cache(d, 512, dtype, scaling=1.25)
    positions = torch.randperm(512, generator=gen, device=DEV)[:50]
    _assert_fused_matches_two_ops(positions, q, k, v, cos_sin, caches, _slots(50, gen))


def test_rope_cache_zero_tokens_writes_nothing():
    gen = _gen(13)
    q, k = _qkv_views(0, 4, 2, 64, torch.bfloat16, gen)
    v = torch.empty(0, 2, 64, dtype=torch.bfloat16, device=DEV)
    kc, vc = _kv_caches(2, 64, torch.bfloat16, gen)
    kc0, vc0 = kc.clone(), vc.clone()
    slots = torch.empty(0, dtype=torch.int64, device=DEV)
    positions = torch.empty(0, dtype=torch.int64, device=DEV)
    q_out = ops.rotary_embedding_and_cache(
        positions, q, k, v, _cache(64, 64, torch.bfloat16), kc, vc, slots
    )
    assert q_out.shape == (0, 4, 64)
    assert torch.equal(kc, kc0) and torch.equal(vc, vc0)


def test_rope_cache_all_slots_skipped_leaves_the_caches():
    gen = _gen(11)
    q, k = _qkv_views(4, 4, 2, 64, torch.bfloat16, gen)
    v = torch.randn(4, 2, 64, generator=gen, device=DEV).to(torch.bfloat16)
    kc, vc = _kv_caches(2, 64, torch.bfloat16, gen)
    kc0, vc0 = kc.clone(), vc.clone()
    slots = torch.full((4,), -1, dtype=torch.int64, device=DEV)
    cos_sin = _cache(64, 64, torch.bfloat16)
    q_out = ops.rotary_embedding_and_cache(
        torch.arange(4, device=DEV), q, k, v, cos_sin, kc, vc, slots
    )
    assert torch.equal(kc, kc0) and torch.equal(vc, vc0)
    assert torch.equal(q_out, ops.rotary_embedding(torch.arange(4, device=DEV), q, k, cos_sin)[0])


class _RopeConfig:
    rope_theta = 10000.0
    max_position_embeddings = 4096
    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}


def _rope_attn(slots):
    from mmcore.layers.attention import AttentionMetadata

    t = slots.shape[0]
    return AttentionMetadata(
        slot_mapping=slots,
        block_tables=torch.zeros(1, 1, dtype=torch.int32, device=DEV),
        seq_lens=torch.tensor([t], dtype=torch.int32, device=DEV),
        query_start_loc=torch.tensor([0, t], dtype=torch.int32, device=DEV),
        max_seq_len=t,
        max_query_len=t,
    )


@pytest.mark.parametrize("fp8", [False, True])
def test_rotate_and_write_kv_fuses_unless_the_cache_is_fp8(fp8, monkeypatch):
    from mmcore.layers.attention import rotate_and_write_kv
    from mmcore.layers.rotary import RotaryEmbedding

    dtype, d = torch.bfloat16, 128
    gen = _gen(21)
    rotary = RotaryEmbedding(_RopeConfig(), d, device=torch.device(DEV), dtype=dtype)
    q, k = _qkv_views(9, 8, 2, d, dtype, gen)
    v = torch.randn(9, 2, d, generator=gen, device=DEV).to(dtype)
    positions = torch.randint(0, 4096, (9,), generator=gen, device=DEV)
    slots = _slots(9, gen)
    kc, vc = _kv_caches(2, d, dtype, gen)
    scales = ()
    if fp8:
        kc, vc = kc.to(torch.float8_e4m3fn), vc.to(torch.float8_e4m3fn)
        scales = (torch.full((2,), 0.05, device=DEV), torch.full((2,), 0.03, device=DEV))
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref, k_ref = ops.rotary_embedding(positions, q, k, rotary.cos_sin_cache)
    ops.reshape_and_cache(k_ref, v, kc_ref, vc_ref, slots, *scales)

    calls = []
    real = ops.rotary_embedding_and_cache
    monkeypatch.setattr(ops, "rotary_embedding_and_cache", lambda *a: calls.append(a) or real(*a))
    q_out = rotate_and_write_kv(rotary, positions, q, k, v, (kc, vc, *scales), _rope_attn(slots))
    assert len(calls) == (0 if fp8 else 1)
    assert torch.equal(q_out, q_ref)
    assert torch.equal(kc.view(torch.uint8), kc_ref.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), vc_ref.view(torch.uint8))


def test_rope_cache_replays_in_cuda_graph():
    gen = _gen(31)
    dtype, d = torch.bfloat16, 128
    q, k = _qkv_views(8, 8, 2, d, dtype, gen)
    v = torch.randn(8, 2, d, generator=gen, device=DEV).to(dtype)
    cos_sin = _cache(d, 4096, dtype)
    positions = torch.randint(0, 4096, (8,), generator=gen, device=DEV)
    slots = _slots(8, gen)
    kc, vc = _kv_caches(2, d, dtype, gen)
    ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, kc, vc, slots)  # warm up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q_out = ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, kc, vc, slots)
    for t in (q, k, v):
        t.copy_(torch.randn(t.shape, generator=gen, device=DEV))
    positions.copy_(torch.randint(0, 4096, (8,), generator=gen, device=DEV))
    slots.copy_(_slots(8, gen))
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, kc_ref, vc_ref, slots)
    graph.replay()
    assert torch.equal(q_out, q_ref)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


# ------------------------------------------------------------------ CUDA graphs and compile


def _layer_inputs(dtype=torch.bfloat16, num_tokens=64):
    gen = _gen(123)
    hidden, inter, hq, hk, d = 512, 1376, 4, 2, 128
    x = torch.randn(num_tokens, hidden, generator=gen, device=DEV).to(dtype)
    res = torch.randn(num_tokens, hidden, generator=gen, device=DEV).to(dtype)
    w = torch.randn(hidden, generator=gen, device=DEV).to(dtype)
    gate_up = torch.randn(num_tokens, 2 * inter, generator=gen, device=DEV).to(dtype)
    q, k = _qkv_views(num_tokens, hq, hk, d, dtype, gen)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen, device=DEV)
    return x, res, w, gate_up, positions, q, k, _cache(d, 4096, dtype)


def _layer(x, res, w, gate_up, positions, q, k, cache):
    normed, summed = ops.fused_add_rms_norm(x, res, w, 1e-6)
    q_out, k_out = ops.rotary_embedding(positions, q, k, cache)
    return ops.rms_norm(summed, w, 1e-6), normed, summed, ops.silu_and_mul(gate_up), q_out, k_out


def test_fused_ops_replay_in_cuda_graph():
    inputs = _layer_inputs()
    _layer(*inputs)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = _layer(*inputs)
    gen = _gen(7)
    for t in inputs[:4]:  # new activations in the captured buffers
        t.copy_(torch.randn(t.shape, generator=gen, device=DEV))
    inputs[4].copy_(torch.randint(0, 4096, inputs[4].shape, generator=gen, device=DEV))
    graph.replay()
    for got, want in zip(outs, _layer(*inputs)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fused_ops_compile_fullgraph(backend):
    if backend == "inductor":
        pytest.importorskip("triton")
    inputs = _layer_inputs(num_tokens=37)
    compiled = torch.compile(_layer, backend=backend, fullgraph=True)
    for got, want in zip(compiled(*inputs), _layer(*inputs)):
        assert torch.equal(got, want)
