"""CUDA paged attention with bidirectional image spans and FP8 (e4m3) KV caches, against the
torch reference (needs a GPU and the built mmcore._kernels).

Case ids name the batch shape (prefill, chunk over a cached prefix, mixed decode + prefill,
decode-variant rows, forced KV splits), the head dim, the dtype and the cache dtype, so a failure
points at one kernel variant. Tolerances: the bf16/fp16 ones of test_kernels_cuda.py against the
reference run on the same (FP8) caches; FP8 vs dense float32 K/V: 0.15 max / 0.015 mean (e4m3's
3-bit mantissa, as in test_kv_cache_fp8.py).
"""

from __future__ import annotations

import pytest
import torch

from mmcore.kernels import ops, reference
from mmcore.testing.attention_batches import random_paged_batch, replay_in_cuda_graph, span_bounds

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TOL = {torch.bfloat16: 2e-2, torch.float16: 1e-2}
FP8 = torch.float8_e4m3fn
HEAD_DIMS = [16, 32, 64, 72, 80, 128, 256]

# name -> (seq_lens, num_queries, spans per request as [start, end) positions, hq, hkv)
SPAN_CASES = {
    # one long prefill; the span crosses 64-key tiles and 128-row tiles
    "prefill": ([300], [300], [[(20, 150)]], 8, 2),
    # a chunk over a cached prefix: one span starts in the cached part, one ends past the chunk
    "chunk": ([530], [130], [[(395, 420), (450, 470), (520, 600)]], 8, 2),
    # decodes mixed with prefills that hold spans, many small spans inside one tile
    "mixed": (
        [37, 200, 530, 64],
        [1, 200, 130, 1],
        [[], [(s, s + 5) for s in range(3, 190, 11)], [(401, 529)], []],
        8,
        8,
    ),
    # max_query_len * group <= 16 rows: the decode variant (key-sliced warps) with a span
    "decode_variant": ([4000, 77], [2, 2], [[(3998, 4000)], [(75, 77)]], 16, 2),
    # few row tiles over a long context: the KV split (flash-decoding) path with a span
    "split_kv": ([8192], [64], [[(8150, 8192)]], 8, 2),
    # sliding window 100 with a span longer than the window
    "window": ([700], [300], [[(450, 620)]], 8, 4),
}


def _check_close(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out.float()).all()
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= TOL[dtype], f"max abs error {err}"


def _dominant_key(args, seq_lens, num_q, spans):
    """Makes one key that only a span opens dominate its query's scores (aligned with that
    query's heads, at the cache dtype's largest safe magnitude), so a kernel ignoring the span
    is off by far more than the tolerance. Returns the query's token row."""
    query, key_cache, _, tables, _, _ = args
    block_size = key_cache.shape[1]
    group = query.shape[1] // key_cache.shape[2]
    token0 = 0
    for seq_len, n, request_spans in zip(seq_lens, num_q, spans):
        for start, end in request_spans:
            key_pos = min(end, seq_len) - 1
            first_q = seq_len - n
            q_pos = max(start, first_q)
            if q_pos < key_pos:
                row = query[token0 + q_pos - first_q].float()  # [Hq, D]
                direction = row.view(key_cache.shape[2], group, -1).sum(1).sign()  # [Hkv, D]
                big = 448.0 if key_cache.dtype == FP8 else 4.0
                b = list(seq_lens).index(seq_len)
                block = int(tables[b, key_pos // block_size])
                key_cache[block, key_pos % block_size] = (direction * big).to(key_cache.dtype)
                return token0 + q_pos - first_q
        token0 += n
    raise AssertionError("no span opens a key after one of its queries")


def _span_case(name, d, dtype, kv_dtype, seed):
    seq_lens, num_q, spans, hq, hkv = SPAN_CASES[name]
    args, scales = random_paged_batch(
        seq_lens, num_q, hq, hkv, d, 16, dtype, seed=seed, kv_dtype=kv_dtype
    )
    token = _dominant_key(args, seq_lens, num_q, spans)
    return args, scales, span_bounds(seq_lens, num_q, spans), token


@pytest.mark.parametrize("kv", ["model_dtype", "fp8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", [64, 72, 128, 256], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("case", list(SPAN_CASES))
def test_paged_attention_image_spans(case, d, dtype, kv):
    kv_dtype = FP8 if kv == "fp8" else None
    args, scales, until, token = _span_case(case, d, dtype, kv_dtype, seed=d + len(case))
    window = 100 if case == "window" else -1
    out = ops.paged_attention(*args, d**-0.5, window, until, **scales)
    ref = reference.paged_attention(*args, d**-0.5, window, until, **scales)
    _check_close(out, ref, dtype)
    # The span must change the result (else a kernel ignoring it would pass).
    plain = reference.paged_attention(*args, d**-0.5, window, **scales)
    assert (plain[token].float() - ref[token].float()).abs().max() > 0.3


def test_image_spans_in_cuda_graph():
    args, _, until, _ = _span_case("mixed", 128, torch.bfloat16, None, seed=11)
    ref = reference.paged_attention(*args, 0.1, -1, until)

    def step(*a):
        return ops.paged_attention(*a, 0.1, -1, until, max_query_len=200, max_seq_len=1024)

    out, _graph = replay_in_cuda_graph(step, args)
    _check_close(out, ref, torch.bfloat16)


@pytest.mark.parametrize("src", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("d", [72, 128], ids=lambda d: f"d{d}")
def test_reshape_and_cache_fp8_matches_reference_bitwise(src, d):
    gen = torch.Generator(device="cuda").manual_seed(d)
    t, hkv, blocks, bs = 50, 4, 12, 16
    kv = (torch.randn(t, 2, hkv, d, generator=gen, device="cuda") * 3).to(src)
    kv[0, 0, 0, :4] = torch.tensor([1e4, -1e4, 0.0, 1e-6])  # saturation, zero, subnormal
    key, value = kv.unbind(1)
    slots = torch.randperm(blocks * bs, generator=gen, device="cuda")[:t]
    slots[::7] = -1
    k_scale = torch.tensor([0.01, 0.5, 1.0, 0.0173], device="cuda")
    v_scale = torch.tensor([0.02, 0.03, 2.0, 0.3], device="cuda")
    caches = [torch.zeros(blocks, bs, hkv, d, device="cuda").to(FP8) for _ in "kv"]
    expect = [c.clone() for c in caches]
    ops.reshape_and_cache(key, value, *caches, slots, k_scale=k_scale, v_scale=v_scale)
    reference.reshape_and_cache(key, value, *expect, slots, k_scale, v_scale)
    for got, want in zip(caches, expect):
        differ = (got.view(torch.uint8) != want.view(torch.uint8)).sum().item()
        assert differ == 0, f"{differ} e4m3 bytes differ from the reference"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", HEAD_DIMS, ids=lambda d: f"d{d}")
@pytest.mark.parametrize(
    "shape",
    ["mixed", "long_decode_splits", "decode_batch"],
)
def test_paged_attention_fp8_cache(shape, d, dtype):
    seq_lens, num_q, hq, hkv = {
        "mixed": ([37, 200, 530, 64, 1], [1, 200, 130, 1, 1], 8, 2),
        "long_decode_splits": ([8192], [1], 32, 8),
        "decode_batch": ([1000 - 31 * b for b in range(16)], [1] * 16, 8, 1),
    }[shape]
    args, scales = random_paged_batch(
        seq_lens, num_q, hq, hkv, d, 16, dtype, seed=d + len(shape), kv_dtype=FP8, qkv_slice=True
    )
    out = ops.paged_attention(*args, d**-0.5, **scales)
    _check_close(out, reference.paged_attention(*args, d**-0.5, **scales), dtype)


def test_fp8_cache_close_to_dense_float32():
    args, scales = random_paged_batch(
        [37, 200, 530], [1, 200, 130], 8, 2, 128, 16, torch.bfloat16, seed=5, kv_dtype=FP8
    )
    query = args[0]
    # The float32 K/V the caches were quantised from, rebuilt with the same seed.
    f32_args, _ = random_paged_batch(
        [37, 200, 530], [1, 200, 130], 8, 2, 128, 16, torch.float32, seed=5
    )
    want = reference.paged_attention(query.float(), *f32_args[1:], 128**-0.5)
    got = ops.paged_attention(*args, 128**-0.5, **scales).float()
    err = (got - want).abs()
    assert err.max() <= 0.15 and err.mean() <= 0.015, (err.max().item(), err.mean().item())


@pytest.mark.parametrize("d", [72, 128, 256], ids=lambda d: f"d{d}")
def test_fp8_cache_in_cuda_graph_and_compile(d):
    args, scales = random_paged_batch(
        [300, 2000], [1, 1], 8, 2, d, 16, torch.bfloat16, seed=3, kv_dtype=FP8
    )
    ref = reference.paged_attention(*args, 0.125, **scales)

    def step(*a):
        return ops.paged_attention(*a, 0.125, max_query_len=1, max_seq_len=4096, **scales)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    _check_close(compiled(*args), ref, torch.bfloat16)
    out, _graph = replay_in_cuda_graph(step, args)
    _check_close(out, ref, torch.bfloat16)


# Head dim 128 decodes over FP8 convert K/V in registers (attention_decode_fp8.cuh): its own
# e4m3 stages, swizzle and block-table walk. Block sizes: powers of two and not (24), smaller and
# larger than a 64-key tile; GQA groups 1, 4 and 16 rows; windows; forced splits.
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("block_size", [16, 24, 32, 128], ids=lambda b: f"block{b}")
@pytest.mark.parametrize(
    "shape",
    [
        ([1, 63, 64, 65, 700, 4097], [1] * 6, 32, 32, -1),  # group 1, tile edges
        ([129, 2000], [4, 1], 32, 8, -1),  # group 4, a request with 4 queries (16 rows)
        ([3000, 517], [1, 1], 16, 1, 100),  # group 16, sliding window
    ],
    ids=["group1", "group4_multiquery", "group16_window"],
)
def test_fp8_decode_head_dim_128(shape, block_size, dtype):
    seq_lens, num_q, hq, hkv, window = shape
    args, scales = random_paged_batch(
        seq_lens, num_q, hq, hkv, 128, block_size, dtype, seed=block_size, kv_dtype=FP8
    )
    ref = reference.paged_attention(*args, 128**-0.5, window, **scales)
    out = ops.paged_attention(*args, 128**-0.5, window, **scales)
    _check_close(out, ref, dtype)


def test_fp8_decode_bfloat16_queries_beyond_float16_range():
    """The register path multiplies in float16: a bfloat16 query past 65504 is scaled down by a
    power of two first (the factor goes into the softmax scale), not turned into inf."""
    args, scales = random_paged_batch(
        [900, 77], [1, 1], 8, 8, 128, 16, torch.bfloat16, seed=11, kv_dtype=FP8
    )
    query = args[0]
    query[0, 3] *= 3e5  # one head with entries ~1e5-1e6
    query[1] *= 1e-3  # tiny queries: near-uniform attention
    scale = 128**-0.5 * 1e-5  # keeps the big head's scores in a range softmax resolves
    ref = reference.paged_attention(*args, scale, **scales)
    out = ops.paged_attention(*args, scale, **scales)
    _check_close(out, ref, torch.bfloat16)
