"""The CPU attention's per-step plan: built once per step, shared by every layer, and each
layer's output equals the pure-torch reference (pure decode steps, mixed steps, GQA, windows,
FP8 caches with per-layer scales, prefill rows with ``attend_until``)."""

import pytest
import torch

from mmcore.kernels import cpu, cpu_plan, reference
from mmcore.layers.attention import AttentionMetadata, paged_attention


def _step(gen, num_q, seq_lens, block_size, hq, hkv, d, num_layers, fp8):
    """Query rows, block tables and ``num_layers`` layers' caches (+ FP8 scales) of one step."""
    blocks = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks) + 3
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((len(seq_lens), max(blocks) + 1), -1, dtype=torch.int32)
    for b, n in enumerate(blocks):
        tables[b, :n] = torch.tensor([perm.pop() for _ in range(n)], dtype=torch.int32)
    layers = []
    for _ in range(num_layers):
        k, v = (torch.randn(num_blocks, block_size, hkv, d, generator=gen) for _ in range(2))
        if fp8:
            scales = (torch.rand(hkv, generator=gen) + 0.5, torch.rand(hkv, generator=gen) + 0.5)
            k = (k / scales[0][:, None]).to(torch.float8_e4m3fn)
            v = (v / scales[1][:, None]).to(torch.float8_e4m3fn)
            layers.append((k, v, *scales))
        else:
            layers.append((k, v))
    starts = torch.tensor([0, *torch.tensor(num_q).cumsum(0).tolist()], dtype=torch.int32)
    queries = [torch.randn(sum(num_q), hq, d, generator=gen) for _ in range(num_layers)]
    return queries, layers, tables, torch.tensor(seq_lens, dtype=torch.int32), starts


_CASES = {
    # (new tokens per request, sequence lengths): all decode (no scatter), then mixed steps.
    "pure_decode": ([1, 1, 1, 1, 1], [1, 17, 40, 9, 33]),
    "mixed": ([1, 6, 1, 6, 3], [30, 9, 5, 9, 12]),
    "prefill_only": ([4, 4, 7], [4, 20, 7]),
}


@pytest.mark.parametrize("case", sorted(_CASES))
@pytest.mark.parametrize(
    "hq,hkv,window,fp8", [(4, 4, -1, False), (8, 2, 7, False), (4, 2, 12, True)]
)
def test_shared_plan_matches_reference_in_every_layer(monkeypatch, case, hq, hkv, window, fp8):
    num_q, seq_lens = _CASES[case]
    gen = torch.Generator().manual_seed(len(case) + hq + window)
    queries, layers, tables, lens, starts = _step(gen, num_q, seq_lens, 4, hq, hkv, 16, 3, fp8)
    until = None
    if case == "mixed":  # an image span inside request 1's chunk sees its end both ways
        until = torch.full((int(starts[-1]),), -1, dtype=torch.int32)
        until[2:5] = 7
    attn = AttentionMetadata(
        slot_mapping=torch.zeros(int(starts[-1]), dtype=torch.long),
        block_tables=tables,
        seq_lens=lens,
        query_start_loc=starts,
        max_seq_len=max(seq_lens),
        max_query_len=max(num_q),
        attend_until=until,
    )
    built = []
    real_plan = cpu_plan.plan_attention
    monkeypatch.setattr(
        "mmcore.layers.attention.plan_attention",
        lambda *a: built.append(a) or real_plan(*a),
    )
    for query, cache in zip(queries, layers):
        got = paged_attention(query, cache, attn, 0.25, window)
        scales = {"k_scale": cache[2], "v_scale": cache[3]} if fp8 else {}
        want = reference.paged_attention(
            query, cache[0], cache[1], tables, lens, starts, 0.25, window, until, **scales
        )
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(built) == 1  # one plan for the step's three layers


def test_plan_for_another_window_or_block_size_is_refused():
    gen = torch.Generator().manual_seed(5)
    queries, layers, tables, lens, starts = _step(gen, [1, 1], [5, 9], 4, 4, 2, 16, 1, False)
    args = (queries[0], *layers[0], tables, lens, starts, 0.25)
    plan = cpu_plan.plan_attention(tables, lens, starts, block_size=4, sliding_window=-1)
    torch.testing.assert_close(
        cpu.paged_attention(*args, plan=plan), reference.paged_attention(*args)
    )
    with pytest.raises(ValueError, match="plan built for block size 4 and window -1"):
        cpu.paged_attention(*args, 3, plan=plan)
    other = cpu_plan.plan_attention(tables, lens, starts, block_size=8)
    with pytest.raises(ValueError, match="called with 4 and -1"):
        cpu.paged_attention(*args, plan=other)
