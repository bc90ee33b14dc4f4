"""The tensor-parallel group this process belongs to (one per worker process).

A process that never called :func:`init_tensor_parallel` is a group of one: rank 0 of world size
1, and every collective in :mod:`mmcore.distributed.communication` is a no-op. That is the
single-process engine (``distributed_executor_backend="uni"``), bit for bit as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorParallelState:
    """Rank and size of the tensor-parallel group, and its torch.distributed group."""

    rank: int = 0
    world_size: int = 1
    group: dist.ProcessGroup | None = None
    mm_encoder_tp_mode: str = "weights"
    peer_all_reduce: object | None = None  # a PeerAllReduce where every rank can use one


_STATE = TensorParallelState()


MM_ENCODER_TP_MODES = ("weights", "data")


def init_tensor_parallel(
    rank: int,
    world_size: int,
    init_method: str,
    *,
    device: torch.device,
    mm_encoder_tp_mode: str = "weights",
    timeout_s: float = 600,
    peer_all_reduce_dtype: torch.dtype | None = None,
) -> None:
    """Join the tensor-parallel process group (NCCL on CUDA devices, gloo on CPU).

    Args:
        rank: this process's rank, 0..world_size-1.
        world_size: number of ranks (``tensor_parallel_size``).
        init_method: torch.distributed rendezvous, e.g. ``"tcp://127.0.0.1:29501"``.
        device: the rank's device; picks the backend.
        mm_encoder_tp_mode: ``"weights"`` shards the multimodal encoders like the LM;
            ``"data"`` replicates them and splits each step's items over the ranks.
        timeout_s: how long a collective may wait for a peer before it fails.
        peer_all_reduce_dtype: the activations' dtype, to reduce small tensors of it with the
            one-shot peer-to-peer all-reduce where every rank can (None: NCCL only).
    """
    global _STATE
    import datetime

    if mm_encoder_tp_mode not in MM_ENCODER_TP_MODES:
        raise ValueError(f"mm_encoder_tp_mode must be one of {MM_ENCODER_TP_MODES}")

    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    peer = None
    if peer_all_reduce_dtype is not None and device.type == "cuda":
        from mmcore.distributed.peer_all_reduce import create_peer_all_reduce

        peer = create_peer_all_reduce(
            dist.group.WORLD, rank, world_size, device, peer_all_reduce_dtype
        )
    _STATE = TensorParallelState(rank, world_size, dist.group.WORLD, mm_encoder_tp_mode, peer)


def destroy_tensor_parallel() -> None:
    """Leave the group (worker shutdown); the process is a group of one again."""
    global _STATE
    if dist.is_initialized():
        dist.destroy_process_group()
    _STATE = TensorParallelState()


def tp_state() -> TensorParallelState:
    """This process's tensor-parallel rank, size and group."""
    return _STATE


def tp_rank() -> int:
    return _STATE.rank


def tp_size() -> int:
    return _STATE.world_size


def encoder_tp_disabled() -> bool:
    """Whether multimodal encoders are replicated (``mm_encoder_tp_mode="data"``, several ranks)."""
    return _STATE.world_size > 1 and _STATE.mm_encoder_tp_mode == "data"
