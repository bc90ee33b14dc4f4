"""The batched CPU attention path equals the pure-torch reference on random mixed batches."""

import pytest
import torch

from mmcore.kernels import cpu, reference


def _random_step(generator, *, num_reqs, block_size, hq, hkv, d, max_len):
    lens = torch.randint(1, max_len + 1, (num_reqs,), generator=generator)
    num_q = [
        1
        if torch.rand((), generator=generator) < 0.5
        else int(torch.randint(1, int(n) + 1, (), generator=generator))
        for n in lens
    ]
    blocks_per = [-(-int(n) // block_size) for n in lens]
    num_blocks = sum(blocks_per) + 4
    perm = torch.randperm(num_blocks, generator=generator).tolist()
    tables = torch.full((num_reqs, max(blocks_per)), -1, dtype=torch.int32)
    for b, n in enumerate(blocks_per):
        tables[b, :n] = torch.tensor([perm.pop() for _ in range(n)], dtype=torch.int32)
    key_cache = torch.randn(num_blocks, block_size, hkv, d, generator=generator)
    value_cache = torch.randn(num_blocks, block_size, hkv, d, generator=generator)
    qsl = torch.tensor([0, *torch.tensor(num_q).cumsum(0).tolist()], dtype=torch.int32)
    query = torch.randn(int(qsl[-1]), hq, d, generator=generator)
    return query, key_cache, value_cache, tables, lens.to(torch.int32), qsl


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize("window", [-1, 7])
def test_paged_attention_matches_reference(seed, hq, hkv, window):
    g = torch.Generator().manual_seed(seed)
    block_size = [1, 4, 16][seed % 3]
    step = _random_step(g, num_reqs=5, block_size=block_size, hq=hq, hkv=hkv, d=16, max_len=40)
    expected = reference.paged_attention(*step, scale=0.25, sliding_window=window)
    got = cpu.paged_attention(*step, scale=0.25, sliding_window=window)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lens", [[5, 5, 3, 0, 5], [1], [7, 2, 7, 2]])
def test_varlen_attention_matches_reference(lens):
    g = torch.Generator().manual_seed(3)
    total = sum(lens)
    q, k, v = (torch.randn(total, 2, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    torch.testing.assert_close(
        cpu.varlen_attention(q, k, v, cu, 0.3),
        reference.varlen_attention(q, k, v, cu, 0.3),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2)])
@pytest.mark.parametrize("window", [-1, 5])
def test_same_shaped_prefills_batched_together_match_reference(hq, hkv, window):
    """Prefill chunks of equal (query, sequence) length share one SDPA call; mixed with other
    shapes and decode rows, every row equals the reference."""
    g = torch.Generator().manual_seed(11)
    block_size, d = 4, 16
    shapes = [(6, 9), (1, 12), (6, 9), (3, 3), (6, 9), (1, 7), (3, 3)]  # (num_q, seq_len)
    blocks_per = [-(-n // block_size) for _, n in shapes]
    num_blocks = sum(blocks_per) + 2
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables = torch.full((len(shapes), max(blocks_per)), -1, dtype=torch.int32)
    for b, n in enumerate(blocks_per):
        tables[b, :n] = torch.tensor([perm.pop() for _ in range(n)], dtype=torch.int32)
    key_cache = torch.randn(num_blocks, block_size, hkv, d, generator=g)
    value_cache = torch.randn(num_blocks, block_size, hkv, d, generator=g)
    qsl = torch.tensor([0, *torch.tensor([q for q, _ in shapes]).cumsum(0).tolist()])
    query = torch.randn(int(qsl[-1]), hq, d, generator=g)
    lens = torch.tensor([n for _, n in shapes], dtype=torch.int32)
    step = (query, key_cache, value_cache, tables, lens, qsl.to(torch.int32))
    expected = reference.paged_attention(*step, scale=0.25, sliding_window=window)
    got = cpu.paged_attention(*step, scale=0.25, sliding_window=window)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("window", [-1, 7])
def test_paged_attention_attend_until_matches_reference(seed, window):
    g = torch.Generator().manual_seed(100 + seed)
    step = _random_step(g, num_reqs=5, block_size=4, hq=4, hkv=2, d=16, max_len=40)
    query, lens, qsl = step[0], step[4].tolist(), step[5].tolist()
    # Random "image" spans inside each request's new tokens: their tokens see the span's end.
    attend_until = torch.empty(query.shape[0], dtype=torch.int32)
    for b, seq_len in enumerate(lens):
        n = qsl[b + 1] - qsl[b]
        pos = torch.arange(seq_len - n, seq_len, dtype=torch.int32)
        if n > 2:
            start = int(torch.randint(0, n - 1, (), generator=g))
            end = int(torch.randint(start + 1, n, (), generator=g))
            pos[start : end + 1] = pos[end]
        attend_until[qsl[b] : qsl[b + 1]] = pos
    expected = reference.paged_attention(*step, 0.25, window, attend_until=attend_until)
    got = cpu.paged_attention(*step, 0.25, window, attend_until=attend_until)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_kind", ["float32", "bfloat16", "fp8", "strided"])
def test_reshape_and_cache_matches_reference(cache_kind):
    """The CPU write (index_copy_ over flat slots) leaves the caches as the reference does,
    negative slots skipped; FP8 and non-contiguous caches included."""
    g = torch.Generator().manual_seed(4)
    key, value = (torch.randn(6, 2, 8, generator=g) for _ in range(2))
    slots = torch.tensor([5, -1, 0, 17, -1, 30])
    dtype = {"bfloat16": torch.bfloat16, "fp8": torch.float8_e4m3fn}.get(cache_kind, torch.float32)
    scales = {"k_scale": torch.tensor([0.5, 2.0]), "v_scale": torch.tensor([1.0, 0.25])}
    extra = scales if cache_kind == "fp8" else {}

    def caches():
        if cache_kind == "strided":  # every other block of a larger tensor
            return tuple(torch.zeros(16, 4, 2, 8)[::2] for _ in range(2))
        return tuple(torch.zeros(8, 4, 2, 8, dtype=dtype) for _ in range(2))

    got, want = caches(), caches()
    cpu.reshape_and_cache(key, value, *got, slots, **extra)
    reference.reshape_and_cache(key, value, *want, slots, **extra)
    for a, b in zip(got, want):
        assert torch.equal(a.float(), b.float())
    assert got[0].float().abs().sum() > 0
