"""The CPU path of the attention ops: batched torch SDPA over gathered KV blocks.

Same signatures and semantics as :mod:`mmcore.kernels.reference` (the oracle it is tested
against), but decode rows of a step run as one batched SDPA call per layer instead of a Python
loop over requests, and prefill chunks use SDPA's fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmcore.kernels.reference import dequantize_kv


def _blocks_rows(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``[n, k * block_size, Hkv, D]``: the cache blocks ``blocks [n, k]`` of each row, in
    order. ``index_select`` over the flat ids copies ~3-4x faster than ``cache[blocks]``."""
    picked = cache.index_select(0, blocks.reshape(-1))
    return picked.view(blocks.shape[0], -1, *cache.shape[2:])


def _gather(
    cache: torch.Tensor,
    tables: torch.Tensor,
    max_len: int,
    first_block: int = 0,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float32 ``[n, max_len - first_block * block_size, Hkv, D]`` K or V of n sequences from
    their block ``first_block`` on (rows past a sequence's end are junk); an FP8 cache's rows are
    dequantised with its per-head ``scale``."""
    block_size = cache.shape[1]
    num_blocks = -(-max_len // block_size)
    blocks = tables[:, first_block:num_blocks].to(torch.long).clamp(min=0)
    rows = _blocks_rows(cache, blocks)
    return dequantize_kv(rows[:, : max_len - first_block * block_size], scale)


def _first_block(min_query_pos: int, sliding_window: int, block_size: int) -> int:
    """First block a query at ``min_query_pos`` or later can see: blocks wholly before every
    query's window are never read (with a window; else block 0)."""
    if sliding_window <= 0:
        return 0
    return max(0, min_query_pos - sliding_window + 1) // block_size


def _visible(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    sliding_window: int,
    upper: torch.Tensor | None = None,
) -> torch.Tensor:
    allowed = k_pos <= (q_pos if upper is None else torch.maximum(q_pos, upper))
    if sliding_window > 0:
        allowed &= k_pos > q_pos - sliding_window
    return allowed


def _gather_from(
    cache: torch.Tensor,
    tables: torch.Tensor,
    first: torch.Tensor,
    span: int,
    scale: torch.Tensor | None = None,
):
    """Float32 ``[n, span * block_size, Hkv, D]``: ``span`` blocks of each row from its own
    ``first`` (FP8: dequantised with ``scale``)."""
    index = (first[:, None] + torch.arange(span, device=first.device)).clamp(
        max=tables.shape[1] - 1
    )
    blocks = tables.gather(1, index.to(torch.long)).to(torch.long).clamp(min=0)
    return dequantize_kv(_blocks_rows(cache, blocks), scale)


def _decode_rows(
    query, key_cache, value_cache, block_tables, lens, rows, q_index, scale, window, kv_scales
):
    """One SDPA call for every request that has a single query this step; with a window each
    row reads only its window's blocks."""
    block_size = key_cache.shape[1]
    lens_t = torch.tensor([lens[b] for b in rows], device=query.device)
    first = torch.tensor(
        [_first_block(lens[b] - 1, window, block_size) for b in rows], device=query.device
    )
    span = int((-(-lens_t // block_size) - first).max())
    tables = block_tables[torch.tensor(rows, device=query.device)]
    k = _gather_from(key_cache, tables, first, span, kv_scales[0]).transpose(1, 2)  # [n, Hkv, L, D]
    v = _gather_from(value_cache, tables, first, span, kv_scales[1]).transpose(1, 2)
    q = query[torch.tensor(q_index, device=query.device)].unsqueeze(2)  # [n, Hq, 1, D]
    k_pos = first[:, None] * block_size + torch.arange(span * block_size, device=query.device)
    mask = _visible((lens_t - 1)[:, None], k_pos, window) & (k_pos < lens_t[:, None])
    out = F.scaled_dot_product_attention(
        q.float(),
        k.float(),
        v.float(),
        attn_mask=mask[:, None, None, :],
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.squeeze(2).to(query.dtype)


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int = -1,
    attend_until: torch.Tensor | None = None,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of varlen queries ``[T, Hq, D]`` over K/V read through block tables.

    ``attend_until`` as in :func:`mmcore.kernels.reference.paged_attention` (a decode row's
    keys all precede it, so only prefill rows read it); ``k_scale`` / ``v_scale`` dequantise
    FP8 caches, as there.
    """
    out = torch.empty_like(query)
    qsl = query_start_loc.tolist()
    lens = seq_lens.tolist()
    decode_rows = [b for b in range(len(lens)) if qsl[b + 1] - qsl[b] == 1]
    if decode_rows:
        q_index = [qsl[b] for b in decode_rows]
        out[torch.tensor(q_index, device=query.device)] = _decode_rows(
            query,
            key_cache,
            value_cache,
            block_tables,
            lens,
            decode_rows,
            q_index,
            scale,
            sliding_window,
            (k_scale, v_scale),
        )
    # Prefill chunks of equal (query length, sequence length) share one SDPA call: a burst of
    # same-shaped prompts costs one call per layer instead of one per request.
    groups: dict[tuple[int, int], list[int]] = {}
    for b, seq_len in enumerate(lens):
        num_q = qsl[b + 1] - qsl[b]
        if num_q > 1:
            groups.setdefault((num_q, seq_len), []).append(b)
    for (num_q, seq_len), rows in groups.items():
        rows_t = torch.tensor(rows, device=query.device)
        first = _first_block(seq_len - num_q, sliding_window, key_cache.shape[1])
        k = _gather(key_cache, block_tables[rows_t], seq_len, first, k_scale).transpose(1, 2)
        v = _gather(value_cache, block_tables[rows_t], seq_len, first, v_scale).transpose(1, 2)
        q_rows = (
            torch.tensor([qsl[b] for b in rows], device=query.device)[:, None]
            + torch.arange(num_q, device=query.device)
        ).flatten()
        q = query[q_rows].view(len(rows), num_q, *query.shape[1:]).transpose(1, 2)
        q_pos = torch.arange(seq_len - num_q, seq_len, device=query.device)[:, None]
        k_pos = torch.arange(first * key_cache.shape[1], seq_len, device=query.device)[None, :]
        if attend_until is None:
            mask = _visible(q_pos, k_pos, sliding_window)
        else:  # [n, 1, num_q, L]: each request's rows have their own upper bounds
            upper = attend_until[q_rows].to(q_pos).view(len(rows), num_q, 1)
            mask = _visible(q_pos, k_pos, sliding_window, upper)[:, None]
        res = F.scaled_dot_product_attention(
            q.float(),
            k.float(),
            v.float(),
            attn_mask=mask,
            scale=scale,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        out[q_rows] = res.transpose(1, 2).reshape(-1, *query.shape[1:]).to(query.dtype)
    return out


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Bidirectional attention within packed sequences; equal-length runs batch into one call."""
    bounds = cu_seqlens.tolist()
    lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    out = torch.empty_like(query)
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        if n > 0:
            by_len.setdefault(n, []).append(bounds[i])
    for n, starts in by_len.items():
        rows = (
            torch.tensor(starts, device=query.device)[:, None]
            + torch.arange(n, device=query.device)
        ).flatten()
        q, k, v = (
            t[rows].view(len(starts), n, *t.shape[1:]).transpose(1, 2).float()
            for t in (query, key, value)
        )
        res = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out[rows] = res.transpose(1, 2).reshape(-1, *query.shape[1:]).to(query.dtype)
    return out
