"""Random paged and packed attention inputs for kernel tests and benches (any device), and a
CUDA-graph replay helper.

Block tables are shuffled so that no request's blocks are contiguous, every cache block is filled
(unused ones too, so a kernel reading a wrong block gives wrong numbers), and FP8 caches are
quantised from known float32 K/V with per-KV-head scales.
"""

from __future__ import annotations

import math

import torch

from mmcore.kernels import reference


def random_paged_batch(
    seq_lens: list[int],
    num_queries: list[int],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    *,
    device: str | torch.device = "cuda",
    seed: int = 0,
    kv_dtype: torch.dtype | None = None,
    qkv_slice: bool = False,
) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """One step's paged-attention inputs.

    Args:
        seq_lens: tokens per request after the step (cached + new).
        num_queries: new tokens per request (the last ones of its sequence).
        num_q_heads, num_kv_heads, head_dim, block_size: shapes.
        dtype: of the queries (and of the caches unless ``kv_dtype`` is given).
        device: where the tensors live.
        seed: of the random values and the block order.
        kv_dtype: ``torch.float8_e4m3fn`` for FP8 caches (scales returned), else None.
        qkv_slice: the queries are a strided view into a fused qkv projection.

    Returns:
        ``((query, key_cache, value_cache, block_tables, seq_lens, query_start_loc), scales)``
        with ``scales`` the ``k_scale`` / ``v_scale`` keyword arguments ({} unless FP8).
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    blocks_per_seq = [math.ceil(n / block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 5
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key32 = torch.randn(shape, generator=gen, device=device)
    value32 = torch.randn(shape, generator=gen, device=device)
    scales: dict[str, torch.Tensor] = {}
    if kv_dtype == torch.float8_e4m3fn:
        # Per-head scales that put each head's largest value near e4m3's top (448).
        for name, cache in (("k_scale", key32), ("v_scale", value32)):
            amax = cache.abs().amax(dim=(0, 1, 3))
            scales[name] = (amax / 400.0).float()
        key_cache = reference.quantize_fp8(
            key32.view(-1, num_kv_heads, head_dim), scales["k_scale"]
        )
        value_cache = reference.quantize_fp8(
            value32.view(-1, num_kv_heads, head_dim), scales["v_scale"]
        )
        key_cache, value_cache = key_cache.view(shape), value_cache.view(shape)
    else:
        key_cache, value_cache = key32.to(dtype), value32.to(dtype)
    perm = torch.randperm(num_blocks, generator=gen, device=device).to(torch.int32)
    tables = torch.full(
        (len(seq_lens), max(blocks_per_seq) + 2), -1, dtype=torch.int32, device=device
    )
    at = 0
    for b, n in enumerate(blocks_per_seq):
        tables[b, :n] = perm[at : at + n]
        at += n
    total = sum(num_queries)
    if qkv_slice:
        width = (num_q_heads + 2 * num_kv_heads) * head_dim
        qkv = torch.randn(total, width, generator=gen, device=device).to(dtype)
        query = qkv[:, : num_q_heads * head_dim].view(total, num_q_heads, head_dim)
    else:
        query = torch.randn(total, num_q_heads, head_dim, generator=gen, device=device).to(dtype)
    starts = torch.tensor([0, *torch.tensor(num_queries).cumsum(0).tolist()], dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    args = (query, key_cache, value_cache, tables, lens.to(device), starts.to(device))
    return args, scales


def span_bounds(
    seq_lens: list[int],
    num_queries: list[int],
    spans: list[list[tuple[int, int]]],
    device: str | torch.device = "cuda",
) -> torch.Tensor:
    """``attend_until`` (int32 ``[T]``) for image spans given as sequence positions.

    Args:
        seq_lens, num_queries: as for :func:`random_paged_batch`.
        spans: per request, ``[start, end)`` position ranges; each query inside one gets
            ``end - 1`` (which may lie past the sequence's end: the kernels clamp), the others -1.

    Returns:
        int32 ``[sum(num_queries)]`` on ``device``.
    """
    bounds: list[int] = []
    for seq_len, num_q, request_spans in zip(seq_lens, num_queries, spans):
        for pos in range(seq_len - num_q, seq_len):
            until = -1
            for start, end in request_spans:
                if start <= pos < end:
                    until = end - 1
            bounds.append(until)
    return torch.tensor(bounds, dtype=torch.int32, device=device)


def random_packed_qkv(
    lens: list[int],
    num_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    *,
    seed: int,
    device: str | torch.device = "cuda",
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Packed (varlen) attention inputs: sequences of ``lens`` tokens back to back.

    Returns:
        ``((q, k, v), cu_seqlens)``: q / k / v ``[T, H, D]`` strided views of one fused
        ``[T, 3, H, D]`` projection, cu_seqlens int32 ``[N + 1]``.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(sum(lens), 3, num_heads, head_dim, generator=gen, device=device).to(dtype)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return qkv.unbind(1), cu.to(device)


def replay_in_cuda_graph(step, args: tuple) -> tuple[torch.Tensor, torch.cuda.CUDAGraph]:
    """Runs ``step(*args)`` once eagerly (warm-up outside the capture), captures it in a CUDA
    graph, zeroes the captured output and replays the graph.

    Returns:
        ``(output the replay wrote, the graph)``; keep the graph while the output is used.
    """
    step(*args)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(*args)
    out.zero_()
    graph.replay()
    return out, graph
