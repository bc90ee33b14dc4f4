"""The collectives of tensor-parallel layers, through torch.distributed; no-ops on one rank."""

from __future__ import annotations

import torch
import torch.distributed as dist

from mmcore.distributed.parallel_state import tp_state
from mmcore.layers.attention import select_op


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks; returns the sum (the input itself on one rank).

    Small CUDA tensors go through the one-shot peer-to-peer all-reduce when the ranks set one
    up (a new tensor); the rest through NCCL or gloo (in place).
    """
    state = tp_state()
    if state.world_size == 1:
        return tensor
    if state.peer_all_reduce is not None and state.peer_all_reduce.takes(tensor):
        return state.peer_all_reduce.all_reduce(tensor)
    dist.all_reduce(tensor, group=state.group)
    return tensor


def all_reduce_add_rms_norm(
    partial: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(s) * weight, s)`` with ``s = residual + sum of partial over the ranks``.

    One kernel on ranks joined by the peer all-reduce (reduction, residual add and norm);
    elsewhere the all-reduce, then the fused add + norm.
    """
    state = tp_state()
    if state.world_size > 1:
        peer = state.peer_all_reduce
        if peer is not None and peer.takes_norm(partial, residual, weight):
            return peer.add_rms_norm(partial, residual, weight, eps)
        partial = all_reduce(partial)
    return select_op("fused_add_rms_norm", partial)(partial, residual, weight, eps)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over the ranks, in place; returns it."""
    state = tp_state()
    if state.world_size == 1:
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=state.group)
    return tensor


def all_gather(tensor: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's equally shaped ``tensor`` along ``dim``, rank order."""
    state = tp_state()
    if state.world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(state.world_size)]
    dist.all_gather(parts, tensor.contiguous(), group=state.group)
    return torch.cat(parts, dim=dim)


def all_gather_varlen(tensor: torch.Tensor, rows_per_rank: list[int]) -> torch.Tensor:
    """Concatenate along dim 0 the ranks' tensors of ``rows_per_rank[r]`` rows each (rank order).

    Args:
        tensor: this rank's rows ``[rows_per_rank[rank], ...]``.
        rows_per_rank: every rank's row count (known on all ranks; zeros allowed).
    """
    state = tp_state()
    if state.world_size == 1:
        return tensor
    most = max(rows_per_rank)
    padded = tensor.new_zeros((most, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(state.world_size)]
    dist.all_gather(parts, padded, group=state.group)
    return torch.cat([part[:rows] for part, rows in zip(parts, rows_per_rank)])


def gather_to_first(tensor: torch.Tensor, dim: int = -1) -> torch.Tensor | None:
    """Concatenate every rank's equally shaped ``tensor`` along ``dim`` on rank 0 only.

    Returns:
        The concatenation on rank 0; None on the other ranks.
    """
    state = tp_state()
    if state.world_size == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(state.world_size)] if state.rank == 0 else None
    dist.gather(tensor, parts, dst=0, group=state.group)
    return torch.cat(parts, dim=dim) if state.rank == 0 else None


def broadcast_from_first(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (the others pass a buffer of the same shape and dtype)."""
    state = tp_state()
    if state.world_size == 1:
        return tensor
    dist.broadcast(tensor, src=0, group=state.group)
    return tensor


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, rank order (start-up checks only: it pickles)."""
    state = tp_state()
    if state.world_size == 1:
        return [obj]
    out = [None] * state.world_size
    dist.all_gather_object(out, obj, group=state.group)
    return out
