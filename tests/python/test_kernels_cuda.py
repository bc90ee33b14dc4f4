"""CUDA kernels against the pure-torch references (needs a GPU and the built mmcore._kernels)."""

from __future__ import annotations

import math

import pytest
import torch

import mmcore
from mmcore.kernels import ops, reference

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 80, 128])
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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("batch,context", [(1, 8192), (3, 4100), (16, 1000)])
def test_paged_attention_long_decode_uses_splits(dtype, d, batch, context):
    gen = torch.Generator(device="cuda").manual_seed(batch * 17 + context)
    seq_lens = [context - 31 * b for b in range(batch)]
    args = _paged_batch(seq_lens, [1] * batch, 32, 8, d, 16, dtype, gen)
    scale = d**-0.5
    out = ops.paged_attention(*args, scale)
    _check_close(out, reference.paged_attention(*args, scale), dtype)


@pytest.mark.parametrize("window", [1, 40, 300])
@pytest.mark.parametrize("d", [80, 128])
def test_paged_attention_sliding_window(window, d):
    gen = torch.Generator(device="cuda").manual_seed(window + d)
    seq_lens, num_queries = [700, 2100, 90], [1, 400, 90]
    args = _paged_batch(seq_lens, num_queries, 16, 4, d, 16, torch.bfloat16, gen)
    out = ops.paged_attention(*args, 0.1, sliding_window=window)
    ref = reference.paged_attention(*args, 0.1, window)
    _check_close(out, ref, torch.bfloat16)


def test_paged_attention_long_prefill_8k():
    gen = torch.Generator(device="cuda").manual_seed(8)
    args = _paged_batch([8192, 3000], [8192, 1000], 8, 2, 128, 16, torch.bfloat16, gen)
    out = ops.paged_attention(*args, 128**-0.5)
    _check_close(out, reference.paged_attention(*args, 128**-0.5), torch.bfloat16)


def test_paged_attention_in_cuda_graph_and_compile():
    gen = torch.Generator(device="cuda").manual_seed(3)
    args = _paged_batch([300, 2000], [1, 1], 8, 2, 128, 16, torch.bfloat16, gen)
    ref = reference.paged_attention(*args, 0.125)

    def step(*a):
        return ops.paged_attention(*a, 0.125, max_query_len=1, max_seq_len=4096)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    _check_close(compiled(*args), ref, torch.bfloat16)
    step(*args)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(*args)
    out.zero_()
    graph.replay()
    _check_close(out, ref, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("lens", [[577], [1, 17, 64, 129, 1000], [577] * 6])
def test_varlen_attention(dtype, d, lens):
    gen = torch.Generator(device="cuda").manual_seed(d + len(lens) + lens[0])
    total, h = sum(lens), 16
    qkv = torch.randn(total, 3, h, d, generator=gen, device="cuda").to(dtype)
    q, k, v = qkv.unbind(1)  # strided views of a fused projection
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32).cuda()
    out = ops.varlen_attention(q, k, v, cu, d**-0.5)
    _check_close(out, reference.varlen_attention(q, k, v, cu, d**-0.5), dtype)


@pytest.mark.parametrize("src,cache", [(torch.bfloat16,) * 2, (torch.float16,) * 2,
                                       (torch.float32,) * 2, (torch.float32, torch.bfloat16)])  # fmt: skip
def test_reshape_and_cache(src, cache):
    gen = torch.Generator(device="cuda").manual_seed(1)
    t, hkv, d, blocks, bs = 50, 4, 80, 12, 16
    kv = torch.randn(t, 2, hkv, d, generator=gen, device="cuda").to(src)
    key, value = kv.unbind(1)
    slots = torch.randperm(blocks * bs, generator=gen, device="cuda")[:t]
    slots[::7] = -1
    caches = [torch.randn(blocks, bs, hkv, d, generator=gen, device="cuda").to(cache) for _ in "kv"]
    expect = [c.clone() for c in caches]
    ops.reshape_and_cache(key, value, *caches, slots)
    reference.reshape_and_cache(key, value, *expect, slots)
    assert torch.equal(caches[0], expect[0]) and torch.equal(caches[1], expect[1])


def test_launcher_rejects_unsupported_head_dim():
    q = torch.randn(4, 4, 96, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, 4], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="head_dim must be 64, 80 or 128"):
        ops.varlen_attention(q, q, q, cu, 0.1)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        ops.varlen_attention(q[..., :64].float(), q[..., :64].float(), q[..., :64].float(), cu, 0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_paged_attention_short_multi_token_queries_and_empty_requests(dtype):
    # group 8 x at most 2 queries = 16 rows: the decode variant with several query tokens,
    # plus a request with no queries this step.
    gen = torch.Generator(device="cuda").manual_seed(11)
    args = _paged_batch([40, 300, 1500, 17], [2, 0, 1, 2], 16, 2, 128, 16, dtype, gen)
    out = ops.paged_attention(*args, 0.09)
    _check_close(out, reference.paged_attention(*args, 0.09), dtype)
