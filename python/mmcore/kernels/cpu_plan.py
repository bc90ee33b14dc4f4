"""Index tensors and masks of the CPU attention path, built once per step.

Every decoder layer of a step attends with the same block tables, sequence lengths and query
layout, so which requests decode, which KV blocks each one reads and which keys each query sees
are the same in every layer: :func:`plan_attention` works them out once (host lists, index
tensors, boolean masks) and :func:`mmcore.kernels.cpu.paged_attention` reads the plan in each
layer instead of rebuilding it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecodeRows:
    """The requests with a single query this step (one batched SDPA call).

    Attributes:
        q_index: long ``[n]`` query row of each.
        blocks: long ``[n * span]`` the KV blocks each row reads, row after row (from its
            window's first block; padding entries point at block 0 and are masked).
        span: blocks read per row.
        mask: bool ``[n, 1, 1, span * block_size]`` keys each row's query sees.
        whole_step: these rows are all of the step's queries, in order (no scatter needed).
    """

    q_index: torch.Tensor
    blocks: torch.Tensor
    span: int
    mask: torch.Tensor
    whole_step: bool


@dataclass(frozen=True)
class PrefillGroup:
    """Prefill chunks of one (query length, sequence length): one SDPA call.

    Attributes:
        q_rows: long ``[n * num_q]`` query rows, request after request.
        blocks: long ``[n * num_blocks]`` the KV blocks of each request from the first block
            any of its queries sees.
        num_rows: requests n.
        num_q: queries per request.
        num_keys: keys read per request (from the first read block to the sequence's end).
        mask: bool, ``[num_q, num_keys]`` or ``[n, 1, num_q, num_keys]`` with ``attend_until``.
    """

    q_rows: torch.Tensor
    blocks: torch.Tensor
    num_rows: int
    num_q: int
    num_keys: int
    mask: torch.Tensor


@dataclass(frozen=True)
class AttentionPlan:
    """What :func:`mmcore.kernels.cpu.paged_attention` reads in every layer of one step.

    Attributes:
        block_size: the KV cache's block size the plan was built for.
        sliding_window: the window it was built for (-1: none).
        decode: the single-query requests, or None.
        prefill: the multi-query chunks, grouped by shape.
    """

    block_size: int
    sliding_window: int
    decode: DecodeRows | None
    prefill: tuple[PrefillGroup, ...]


def first_block(min_query_pos: int, sliding_window: int, block_size: int) -> int:
    """First block a query at ``min_query_pos`` or later can see: blocks wholly before every
    query's window are never read (with a window; else block 0)."""
    if sliding_window <= 0:
        return 0
    return max(0, min_query_pos - sliding_window + 1) // block_size


def visible(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    sliding_window: int,
    upper: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keys at ``k_pos`` a query at ``q_pos`` sees: causal (or up to ``upper`` when larger),
    within the window."""
    allowed = k_pos <= (q_pos if upper is None else torch.maximum(q_pos, upper))
    if sliding_window > 0:
        allowed &= k_pos > q_pos - sliding_window
    return allowed


def _decode_rows(tables, lens, qsl, rows, block_size, window) -> DecodeRows:
    device = tables.device
    lens_t = torch.tensor([lens[b] for b in rows], device=device)
    first = torch.tensor(
        [first_block(lens[b] - 1, window, block_size) for b in rows], device=device
    )
    span = int((-(-lens_t // block_size) - first).max())
    index = (first[:, None] + torch.arange(span, device=device)).clamp(max=tables.shape[1] - 1)
    row_tables = tables[torch.tensor(rows, device=device)].to(torch.long)
    blocks = row_tables.gather(1, index).clamp(min=0).reshape(-1)
    k_pos = first[:, None] * block_size + torch.arange(span * block_size, device=device)
    mask = visible((lens_t - 1)[:, None], k_pos, window) & (k_pos < lens_t[:, None])
    return DecodeRows(
        q_index=torch.tensor([qsl[b] for b in rows], device=device),
        blocks=blocks,
        span=span,
        mask=mask[:, None, None, :],
        whole_step=len(rows) == qsl[-1],
    )


def _prefill_group(tables, qsl, rows, num_q, seq_len, block_size, window, attend_until):
    device = tables.device
    first = first_block(seq_len - num_q, window, block_size)
    num_blocks = -(-seq_len // block_size)
    row_tables = tables[torch.tensor(rows, device=device)]
    blocks = row_tables[:, first:num_blocks].to(torch.long).clamp(min=0).reshape(-1)
    q_rows = (
        torch.tensor([qsl[b] for b in rows], device=device)[:, None]
        + torch.arange(num_q, device=device)
    ).flatten()
    q_pos = torch.arange(seq_len - num_q, seq_len, device=device)[:, None]
    k_pos = torch.arange(first * block_size, seq_len, device=device)[None, :]
    if attend_until is None:
        mask = visible(q_pos, k_pos, window)
    else:  # [n, 1, num_q, L]: each request's rows have their own upper bounds
        upper = attend_until[q_rows].to(q_pos).view(len(rows), num_q, 1)
        mask = visible(q_pos, k_pos, window, upper)[:, None]
    return PrefillGroup(
        q_rows=q_rows,
        blocks=blocks,
        num_rows=len(rows),
        num_q=num_q,
        num_keys=seq_len - first * block_size,
        mask=mask,
    )


def plan_attention(
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    block_size: int,
    sliding_window: int = -1,
    attend_until: torch.Tensor | None = None,
) -> AttentionPlan:
    """The per-step part of the CPU paged attention (arguments as in
    :func:`mmcore.kernels.reference.paged_attention`).

    Args:
        block_tables: int ``[B, max_blocks]``.
        seq_lens: int ``[B]``.
        query_start_loc: int ``[B + 1]``.
        block_size: the KV cache's tokens per block.
        sliding_window: keys older than this many positions are invisible (-1: none).
        attend_until: int ``[T]`` or None.

    Returns:
        The plan every layer of the step reads.
    """
    qsl = query_start_loc.tolist()
    lens = seq_lens.tolist()
    decode = [b for b in range(len(lens)) if qsl[b + 1] - qsl[b] == 1]
    # Prefill chunks of equal (query length, sequence length) share one SDPA call: a burst of
    # same-shaped prompts costs one call per layer instead of one per request.
    groups: dict[tuple[int, int], list[int]] = {}
    for b, seq_len in enumerate(lens):
        num_q = qsl[b + 1] - qsl[b]
        if num_q > 1:
            groups.setdefault((num_q, seq_len), []).append(b)
    return AttentionPlan(
        block_size=block_size,
        sliding_window=sliding_window,
        decode=(
            _decode_rows(block_tables, lens, qsl, decode, block_size, sliding_window)
            if decode
            else None
        ),
        prefill=tuple(
            _prefill_group(
                block_tables, qsl, rows, num_q, seq_len, block_size, sliding_window, attend_until
            )
            for (num_q, seq_len), rows in groups.items()
        ),
    )
