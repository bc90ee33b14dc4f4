"""CUDA kernels against the pure-torch references (needs a GPU and the built mmcore._kernels)."""

from __future__ import annotations

import math

import pytest
import torch

import mmcore
from mmcore.kernels import ops, reference
from mmcore.testing.attention_batches import random_packed_qkv, replay_in_cuda_graph

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TOL = {torch.bfloat16: 2e-2, torch.float16: 1e-2}


def test_kernels_module_is_built():
    assert mmcore.has_cuda_kernels(), "mmcore._kernels must be built where a GPU exists"


def _paged_batch(seq_lens, num_queries, hq, hkv, d, block_size, dtype, gen, qkv_slice=False):
    """Random caches (every block filled, unused ones too) and shuffled block tables."""
    dev = "cuda"
    blocks_per_seq = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 5
    shape = (num_blocks, block_size, hkv, d)
    key_cache = torch.randn(shape, generator=gen, device=dev).to(dtype)
    value_cache = torch.randn(shape, generator=gen, device=dev).to(dtype)
    perm = torch.randperm(num_blocks, generator=gen, device=dev).to(torch.int32)
    max_blocks = max(blocks_per_seq) + 2
    tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32, device=dev)
    at = 0
    for b, n in enumerate(blocks_per_seq):
        tables[b, :n] = perm[at : at + n]
        at += n
    total = sum(num_queries)
    if qkv_slice:  # q as a strided view into a fused qkv projection
        qkv = torch.randn(total, (hq + 2 * hkv) * d, generator=gen, device=dev).to(dtype)
        query = qkv[:, : hq * d].view(total, hq, d)
    else:
        query = torch.randn(total, hq, d, generator=gen, device=dev).to(dtype)
    starts = torch.tensor([0, *torch.tensor(num_queries).cumsum(0).tolist()], dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return query, key_cache, value_cache, tables, lens.to(dev), starts.to(dev)


def _check_close(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out.float()).all()
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= TOL[dtype], f"max abs error {err}"


HEAD_DIMS = [16, 32, 64, 72, 80, 128, 256]  # ops.ATTENTION_HEAD_DIMS
_d_id = "d{}".format


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", HEAD_DIMS, ids=_d_id)
@pytest.mark.parametrize("hq,hkv", [(8, 8), (8, 2), (8, 1)])
@pytest.mark.parametrize("block_size", [16, 24, 32])
def test_paged_attention_mixed_batch(dtype, d, hq, hkv, block_size):
    gen = torch.Generator(device="cuda").manual_seed(d * 131 + hq * 7 + hkv + block_size)
    # decode, full prefill, chunk over a cached prefix, decode at a block edge, single-key seq
    seq_lens = [37, 200, 530, 64, 1]
    num_queries = [1, 200, 130, 1, 1]
    args = _paged_batch(seq_lens, num_queries, hq, hkv, d, block_size, dtype, gen, qkv_slice=True)
    scale = d**-0.5
    out = ops.paged_attention(*args, scale)
    _check_close(out, reference.paged_attention(*args, scale), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", [64, 72, 128, 256], ids=_d_id)
@pytest.mark.parametrize("batch,context", [(1, 8192), (3, 4100), (16, 1000)])
def test_paged_attention_long_decode_uses_splits(dtype, d, batch, context):
    gen = torch.Generator(device="cuda").manual_seed(batch * 17 + context)
    seq_lens = [context - 31 * b for b in range(batch)]
    args = _paged_batch(seq_lens, [1] * batch, 32, 8, d, 16, dtype, gen)
    scale = d**-0.5
    out = ops.paged_attention(*args, scale)
    _check_close(out, reference.paged_attention(*args, scale), dtype)


@pytest.mark.parametrize("context", [65, 300, 640, 1000])
@pytest.mark.parametrize("hq,hkv", [(32, 32), (16, 16), (32, 8)])
def test_short_batch1_decodes_split_by_the_tile_and_match_the_reference(context, hq, hkv):
    # A batch-1 decode over a few hundred keys is latency: its keys split down to one 64-key
    # tile per CTA (some splits may get none), merged in the kernel.
    plan = ops._kernels().paged_launch_plan
    sms = ops._num_sms(0)
    fine = plan(1, 1, hq, hkv, 1, 1, context, sms, 128)[0]
    coarse = plan(1, 1, hq, hkv, 1, 1, context, sms, 128, min_tiles_per_split=4)[0]
    assert fine >= coarse and (context < 640 or fine > coarse)
    gen = torch.Generator(device="cuda").manual_seed(context + hq + hkv)
    args = _paged_batch([context], [1], hq, hkv, 128, 16, torch.bfloat16, gen)
    out = ops.paged_attention(*args, 0.08)
    _check_close(out, reference.paged_attention(*args, 0.08), torch.bfloat16)


@pytest.mark.parametrize("d", [64, 72, 128, 256], ids=_d_id)
@pytest.mark.parametrize("batch,context,hkv", [(1, 8192, 8), (3, 4100, 2), (5, 2000, 1)])
def test_split_merge_in_the_kernel_equals_the_combine_kernel(monkeypatch, d, batch, context, hkv):
    # The last split CTA of each (row tile, KV head) merges the partials itself: the same sums in
    # the same order as the combine kernel, so the same bits; its counters end at zero again.
    gen = torch.Generator(device="cuda").manual_seed(d + batch + hkv)
    seq_lens = [context - 57 * b for b in range(batch)]
    args = _paged_batch(seq_lens, [1] * batch, 8 * hkv, hkv, d, 16, torch.bfloat16, gen)
    fused = ops.paged_attention(*args, d**-0.5)
    counters = ops._split_counters(fused.device)
    assert counters is not None and int(counters.abs().sum()) == 0
    monkeypatch.setattr(ops, "_split_counters", lambda device: None)
    combined = ops.paged_attention(*args, d**-0.5)
    assert torch.equal(fused, combined)
    _check_close(fused, reference.paged_attention(*args, d**-0.5), torch.bfloat16)


def test_split_merge_replays_in_a_graph_with_new_queries():
    gen = torch.Generator(device="cuda").manual_seed(5)
    query, *rest = _paged_batch([6000, 3000], [1, 1], 32, 8, 128, 16, torch.bfloat16, gen)

    def step(q):
        return ops.paged_attention(q, *rest, 0.09, max_query_len=1, max_seq_len=8192)

    step(query)  # warm up outside the capture (creates the counters)
    static = query.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(static)
    for seed in range(3):
        static.copy_(torch.randn(query.shape, generator=gen.manual_seed(seed), device="cuda"))
        graph.replay()
        eager = step(static)
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
        _check_close(out, reference.paged_attention(static, *rest, 0.09), torch.bfloat16)


def test_paged_launch_plan_splits_mixed_steps_by_query_rows():
    plan = ops._kernels().paged_launch_plan
    sms = ops._num_sms(0)
    decode, prefill = plan(8, 8, 32, 8, 1, 1, 4096, sms)  # 8 decodes, group 4
    assert decode >= 1 and prefill == 0
    decode, prefill = plan(2, 900, 32, 8, 400, 500, 900, sms)  # two prefill chunks
    assert decode == 0 and prefill >= 1
    decode, prefill = plan(5, 600, 32, 8, 1, 500, 4096, sms)  # decodes next to a prefill
    assert decode >= 1 and prefill >= 1
    assert plan(5, 20, 32, 8, 4, 4, 4096, sms)[1] == 0  # 4 queries x group 4 = 16 rows: decode
    assert plan(5, 5, 32, 1, 1, 1, 4096, sms)[0] == 0  # group 32: one query is 32 rows
    with pytest.raises(ValueError, match="min_query_len"):
        plan(5, 20, 32, 8, 6, 4, 4096, sms)


@pytest.mark.parametrize("d", [64, 128, 256], ids=_d_id)
@pytest.mark.parametrize("hq,hkv", [(8, 8), (16, 4)])
def test_mixed_step_runs_decodes_and_prefills_in_their_own_variants(monkeypatch, d, hq, hkv):
    # Decodes (long contexts: split KV), a short GQA run of 16 rows and prefill chunks,
    # interleaved; the two-launch path equals the reference, the prefill-only launch and (with
    # the in-kernel split merge off) the combine kernel's output.
    gen = torch.Generator(device="cuda").manual_seed(d + hq)
    seq_lens = [4000, 300, 5100, 16 // (hq // hkv) + 900, 2000, 64, 1]
    num_queries = [1, 300, 1, 16 // (hq // hkv), 130, 1, 1]
    args = _paged_batch(seq_lens, num_queries, hq, hkv, d, 16, torch.bfloat16, gen)
    decode, prefill = ops._kernels().paged_launch_plan(
        len(seq_lens), sum(num_queries), hq, hkv, 1, 300, 5100, ops._num_sms(0), d
    )
    assert decode > 1 and prefill >= 1
    scale = d**-0.5
    mixed = ops.paged_attention(*args, scale)
    _check_close(mixed, reference.paged_attention(*args, scale), torch.bfloat16)
    prefill_only = ops.paged_attention(*args, scale, max_query_len=300, min_query_len=300)
    _check_close(mixed, prefill_only, torch.bfloat16)
    monkeypatch.setattr(ops, "_split_counters", lambda device: None)
    assert torch.equal(mixed, ops.paged_attention(*args, scale))


@pytest.mark.parametrize("window", [1, 40, 300])
@pytest.mark.parametrize("d", [72, 80, 128, 256], ids=_d_id)
def test_paged_attention_sliding_window(window, d):
    gen = torch.Generator(device="cuda").manual_seed(window + d)
    seq_lens, num_queries = [700, 2100, 90], [1, 400, 90]
    args = _paged_batch(seq_lens, num_queries, 16, 4, d, 16, torch.bfloat16, gen)
    out = ops.paged_attention(*args, 0.1, sliding_window=window)
    ref = reference.paged_attention(*args, 0.1, window)
    _check_close(out, ref, torch.bfloat16)


@pytest.mark.parametrize("d", [72, 128, 256], ids=_d_id)
def test_paged_attention_long_prefill_8k(d):
    gen = torch.Generator(device="cuda").manual_seed(8)
    args = _paged_batch([8192, 3000], [8192, 1000], 8, 2, d, 16, torch.bfloat16, gen)
    out = ops.paged_attention(*args, d**-0.5)
    _check_close(out, reference.paged_attention(*args, d**-0.5), torch.bfloat16)


@pytest.mark.parametrize("d", [72, 128, 256], ids=_d_id)
def test_paged_attention_in_cuda_graph_and_compile(d):
    gen = torch.Generator(device="cuda").manual_seed(3)
    args = _paged_batch([300, 2000], [1, 1], 8, 2, d, 16, torch.bfloat16, gen)
    ref = reference.paged_attention(*args, 0.125)

    def step(*a):
        return ops.paged_attention(*a, 0.125, max_query_len=1, max_seq_len=4096)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    _check_close(compiled(*args), ref, torch.bfloat16)
    out, _graph = replay_in_cuda_graph(step, args)
    _check_close(out, ref, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("d", HEAD_DIMS, ids=_d_id)
@pytest.mark.parametrize("lens", [[577], [1, 17, 64, 129, 1000], [577] * 6, [729] * 4])
def test_varlen_attention(dtype, d, lens):
    (q, k, v), cu = random_packed_qkv(lens, 16, d, dtype, seed=d + len(lens) + lens[0])
    out = ops.varlen_attention(q, k, v, cu, d**-0.5)
    _check_close(out, reference.varlen_attention(q, k, v, cu, d**-0.5), dtype)


@pytest.mark.parametrize("src,cache", [(torch.bfloat16,) * 2, (torch.float16,) * 2,
                                       (torch.float32,) * 2, (torch.float32, torch.bfloat16)])  # fmt: skip
# 80: 16-byte vectors; 36: vectors for float32 only; "offset": rows one element off 16-byte
# alignment (the scalar path).
@pytest.mark.parametrize("layout", ["d80", "d36", "offset"])
def test_reshape_and_cache(src, cache, layout):
    gen = torch.Generator(device="cuda").manual_seed(1)
    t, hkv, blocks, bs = 50, 4, 12, 16
    d = 36 if layout == "d36" else 80
    flat = torch.randn(t, 2 * hkv * d + 1, generator=gen, device="cuda").to(src)
    start = 1 if layout == "offset" else 0
    key, value = flat[:, start : start + 2 * hkv * d].view(t, 2, hkv, d).unbind(1)
    slots = torch.randperm(blocks * bs, generator=gen, device="cuda")[:t]
    slots[::7] = -1
    caches = [torch.randn(blocks, bs, hkv, d, generator=gen, device="cuda").to(cache) for _ in "kv"]
    expect = [c.clone() for c in caches]
    ops.reshape_and_cache(key, value, *caches, slots)
    reference.reshape_and_cache(key, value, *expect, slots)
    assert torch.equal(caches[0], expect[0]) and torch.equal(caches[1], expect[1])


def test_float32_inputs_run_the_reference():
    gen = torch.Generator(device="cuda").manual_seed(5)
    cu = torch.tensor([0, 9, 30], dtype=torch.int32, device="cuda")
    q, k, v = torch.randn(3, 30, 4, 64, generator=gen, device="cuda").unbind(0)
    assert not ops.attention_kernel_supports(q, k)
    out = ops.varlen_attention(q, k, v, cu, 0.1)
    torch.testing.assert_close(out, reference.varlen_attention(q, k, v, cu, 0.1))


def test_unsupported_half_precision_head_dim_raises():
    gen = torch.Generator(device="cuda").manual_seed(5)
    cu = torch.tensor([0, 9, 30], dtype=torch.int32, device="cuda")
    q, k, v = torch.randn(3, 30, 4, 96, generator=gen, device="cuda").bfloat16().unbind(0)
    assert not ops.attention_kernel_supports(q, k)
    with pytest.raises(ValueError, match="no CUDA attention kernel for head dim 96"):
        ops.varlen_attention(q, k, v, cu, 0.1)
    args = _paged_batch([40], [40], 4, 2, 96, 16, torch.bfloat16, gen)
    with pytest.raises(ValueError, match="no CUDA attention kernel for head dim 96"):
        ops.paged_attention(*args, 0.1)
    with pytest.raises(ValueError, match="does not match the query"):
        ops.varlen_attention(q[..., :64], k[..., :64].half(), v[..., :64], cu, 0.1)


def _raw_varlen(q, cu, head_dim, dtype_code, num_kv_heads=None):
    """Calls the launcher binding directly (bypassing the op's fallback)."""
    ws = torch.empty(cu.numel() + 1, dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    ops._kernels().varlen_attention(
        q=q.data_ptr(), q_strides=q.stride()[:2], k=q.data_ptr(), k_strides=q.stride()[:2],
        v=q.data_ptr(), v_strides=q.stride()[:2], cu_seqlens=cu.data_ptr(),
        tile_offsets=ws.data_ptr(), out=out.data_ptr(), out_strides=out.stride()[:2],
        num_seqs=cu.numel() - 1, num_tokens=q.shape[0], num_q_heads=q.shape[1],
        num_kv_heads=num_kv_heads or q.shape[1], head_dim=head_dim, dtype=dtype_code, scale=0.1,
        causal=False, stream=torch.cuda.current_stream().cuda_stream,
    )  # fmt: skip
    return out


def test_launcher_validation_raises_value_error():
    q = torch.randn(4, 4, 96, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, 4], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="head_dim must be 16, 32, 64, 72, 80, 128 or 256"):
        _raw_varlen(q, cu, 96, 2)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        _raw_varlen(q[..., :64], cu, 64, 0)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        _raw_varlen(q[..., :64], cu, 64, 2, num_kv_heads=3)
    with pytest.raises(ValueError, match="multiples of 8"):
        _raw_varlen(torch.randn(4, 4, 68, device="cuda", dtype=torch.bfloat16)[..., :64], cu, 64, 2)
