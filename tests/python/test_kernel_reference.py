"""The pure-torch references agree with torch SDPA on dense layouts."""

import pytest
import torch
import torch.nn.functional as F

from mmcore.kernels import reference


def _paged_layout(keys, values, block_size, generator):
    """Scatter per-sequence K/V [L, Hkv, D] into shuffled cache blocks; return caches + tables."""
    num_blocks = sum((k.shape[0] + block_size - 1) // block_size for k in keys) + 3
    hkv, d = keys[0].shape[1:]
    key_cache = torch.zeros(num_blocks, block_size, hkv, d)
    value_cache = torch.zeros_like(key_cache)
    order = torch.randperm(num_blocks, generator=generator).tolist()
    max_blocks = max((k.shape[0] + block_size - 1) // block_size for k in keys)
    tables = torch.full((len(keys), max_blocks), -1, dtype=torch.int32)
    for b, (k, v) in enumerate(zip(keys, values)):
        n = (k.shape[0] + block_size - 1) // block_size
        blocks = [order.pop() for _ in range(n)]
        tables[b, :n] = torch.tensor(blocks, dtype=torch.int32)
        slots = torch.tensor(
            [blocks[i // block_size] * block_size + i % block_size for i in range(k.shape[0])]
        )
        reference.reshape_and_cache(k, v, key_cache, value_cache, slots)
    return key_cache, value_cache, tables


@pytest.mark.parametrize("block_size", [4, 16])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize("window", [-1, 5])
def test_paged_attention_matches_sdpa(block_size, hq, hkv, window):
    g = torch.Generator().manual_seed(0)
    d = 16
    seq_lens = [1, 7, 33, 20]
    num_queries = [1, 7, 10, 1]  # decode, full prefill, chunk with cached prefix, decode
    keys = [torch.randn(n, hkv, d, generator=g) for n in seq_lens]
    values = [torch.randn(n, hkv, d, generator=g) for n in seq_lens]
    queries = [torch.randn(n, hq, d, generator=g) for n in num_queries]
    key_cache, value_cache, tables = _paged_layout(keys, values, block_size, g)
    qsl = torch.tensor([0, *torch.tensor(num_queries).cumsum(0).tolist()], dtype=torch.int32)
    out = reference.paged_attention(
        torch.cat(queries),
        key_cache,
        value_cache,
        tables,
        torch.tensor(seq_lens, dtype=torch.int32),
        qsl,
        scale=d**-0.5,
        sliding_window=window,
    )
    for b in range(len(seq_lens)):
        L, nq = seq_lens[b], num_queries[b]
        q_pos = torch.arange(L - nq, L)[:, None]
        k_pos = torch.arange(L)[None, :]
        mask = k_pos <= q_pos
        if window > 0:
            mask &= k_pos > q_pos - window
        k = keys[b].repeat_interleave(hq // hkv, 1).transpose(0, 1)
        v = values[b].repeat_interleave(hq // hkv, 1).transpose(0, 1)
        expected = F.scaled_dot_product_attention(queries[b].transpose(0, 1), k, v, attn_mask=mask)
        got = out[qsl[b] : qsl[b + 1]].transpose(0, 1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_reshape_and_cache_skips_negative_slots():
    key_cache = torch.zeros(2, 4, 1, 2)
    value_cache = torch.zeros_like(key_cache)
    k = torch.ones(3, 1, 2)
    reference.reshape_and_cache(k, 2 * k, key_cache, value_cache, torch.tensor([5, -1, 0]))
    assert key_cache[1, 1].eq(1).all() and key_cache[0, 0].eq(1).all()
    assert value_cache[1, 1].eq(2).all()
    assert key_cache.sum() == 4  # two slots of two elements; the -1 slot wrote nothing


def test_varlen_attention_matches_per_sequence_sdpa():
    g = torch.Generator().manual_seed(1)
    lens = [5, 1, 12]
    q, k, v = (torch.randn(sum(lens), 3, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, 5, 6, 18], dtype=torch.int32)
    out = reference.varlen_attention(q, k, v, cu, scale=8**-0.5)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        expected = F.scaled_dot_product_attention(*(t[s:e].transpose(0, 1) for t in (q, k, v)))
        torch.testing.assert_close(out[s:e].transpose(0, 1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [-1, 4])
def test_paged_attention_attend_until_opens_image_spans(window):
    """Tokens of a span see each other both ways; text stays causal; the window still bounds."""
    g = torch.Generator().manual_seed(1)
    hq, hkv, d, L, block_size = 4, 2, 16, 12, 4
    spans = [(3, 7)]  # positions 3..7 are one image
    keys, values = torch.randn(L, hkv, d, generator=g), torch.randn(L, hkv, d, generator=g)
    query = torch.randn(L, hq, d, generator=g)
    key_cache, value_cache, tables = _paged_layout([keys], [values], block_size, g)
    attend_until = torch.arange(L, dtype=torch.int32)
    for start, end in spans:
        attend_until[start : end + 1] = end
    args = (query, key_cache, value_cache, tables, torch.tensor([L], dtype=torch.int32))
    qsl = torch.tensor([0, L], dtype=torch.int32)
    out = reference.paged_attention(*args, qsl, d**-0.5, window, attend_until=attend_until)
    causal = reference.paged_attention(*args, qsl, d**-0.5, window)
    q_pos, k_pos = torch.arange(L)[:, None], torch.arange(L)[None, :]
    mask = k_pos <= torch.maximum(q_pos, attend_until[:, None])
    if window > 0:
        mask &= k_pos > q_pos - window
    k = keys.repeat_interleave(hq // hkv, 1).transpose(0, 1)
    v = values.repeat_interleave(hq // hkv, 1).transpose(0, 1)
    dense = F.scaled_dot_product_attention(
        query.transpose(0, 1), k, v, attn_mask=mask, scale=d**-0.5
    )
    torch.testing.assert_close(out, dense.transpose(0, 1), atol=1e-5, rtol=1e-5)
    # Inside the image the output differs from causal; before it, it cannot.
    assert not torch.allclose(out[3:7], causal[3:7])
    torch.testing.assert_close(out[:3], causal[:3])
