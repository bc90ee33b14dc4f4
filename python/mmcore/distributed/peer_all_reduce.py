"""A one-shot all-reduce over peer-to-peer GPU memory, for the small tensors of decode steps.

NCCL's all-reduce of a ``[1, 4096]`` activation takes ~29 µs on two NVLink-connected H200s,
most of it fixed cost; two per layer make it half of a tensor-parallel decode step. Here each
rank copies its input into a buffer every rank can read (PyTorch symmetric memory: peer
mappings of one allocation per rank, exchanged once), the ranks meet at a GPU-side barrier, and
every rank sums all the buffers itself: one kernel, no host round trip, and it can be captured
in a CUDA graph. Larger tensors (prefill) keep NCCL, whose ring uses the links better.

The kernels are PyTorch's (``torch.ops.symm_mem.one_shot_all_reduce_copy_out``); they reduce
float32 and bfloat16. Float16 models and setups without peer access keep NCCL, and the choice
is logged once at start-up.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# Largest tensor (bytes) reduced here; above it NCCL is used.
DEFAULT_MAX_BYTES = 8 << 20
SUPPORTED_DTYPES = (torch.bfloat16, torch.float32)


def unavailable_reason(device: torch.device, dtype: torch.dtype, world_size: int) -> str | None:
    """Why this rank cannot use the peer all-reduce (None when it can)."""
    if device.type != "cuda":
        return "not a CUDA device"
    if world_size < 2:
        return "one rank"
    if dtype not in SUPPORTED_DTYPES:
        return f"{dtype} is not reduced by PyTorch's one-shot kernels (bfloat16, float32 are)"
    try:
        import torch.distributed._symmetric_memory  # noqa: F401
    except ImportError as exc:
        return f"PyTorch has no symmetric memory ({exc})"
    ops = torch.ops.symm_mem
    if not (
        hasattr(ops, "one_shot_all_reduce_copy_out") or hasattr(ops, "one_shot_all_reduce_out")
    ):
        return "PyTorch lacks symm_mem.one_shot_all_reduce_out"
    visible = torch.cuda.device_count()
    if visible >= world_size:
        # Each rank uses cuda:rank (mp executor); peers must map each other's memory.
        for peer in range(world_size):
            if peer != device.index and not torch.cuda.can_device_access_peer(device.index, peer):
                return f"cuda:{device.index} has no peer access to cuda:{peer}"
    return None


class PeerAllReduce:
    """The symmetric buffer of this rank and the one-shot all-reduce over it.

    Create it on every rank of ``group`` together (:func:`create_peer_all_reduce`): the buffer's
    rendezvous is a collective.
    """

    def __init__(self, group: dist.ProcessGroup, device: torch.device, dtype, max_bytes: int):
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = group.group_name
        self.dtype = dtype
        self.max_numel = max_bytes // torch.empty((), dtype=dtype).element_size()
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None:  # needed before PyTorch 2.9, deprecated after
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                enable(self.group_name)
        self.buffer = symm_mem.empty(self.max_numel, dtype=dtype, device=device)
        self.handle = symm_mem.rendezvous(self.buffer, self.group_name)
        # PyTorch >= 2.8 copies the input in the reducing kernel; before, a separate copy.
        self._fused_copy = hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out")

    def takes(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is reduced here (dtype, size, layout) rather than by NCCL."""
        return (
            tensor.dtype == self.dtype
            and tensor.numel() <= self.max_numel
            and tensor.is_cuda
            and tensor.is_contiguous()
        )

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks, as a new tensor of its shape."""
        out = torch.empty_like(tensor)
        staging = self.buffer[: tensor.numel()]
        if self._fused_copy:
            torch.ops.symm_mem.one_shot_all_reduce_copy_out(
                staging, tensor.view(-1), "sum", self.group_name, out.view(-1)
            )
        else:
            staging.copy_(tensor.view(-1))
            torch.ops.symm_mem.one_shot_all_reduce_out(
                staging, "sum", self.group_name, out.view(-1)
            )
        return out


def create_peer_all_reduce(
    group: dist.ProcessGroup,
    rank: int,
    world_size: int,
    device: torch.device,
    dtype: torch.dtype,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> PeerAllReduce | None:
    """The peer all-reduce when every rank can use it, else None (NCCL then); logs which.

    Every rank of ``group`` must call this together: the ranks agree on the choice first (one
    rank's lack of peer access turns it off for all), then exchange the buffers.
    """
    reason = unavailable_reason(device, dtype, world_size)
    reasons = [None] * world_size
    dist.all_gather_object(reasons, reason, group=group)
    refusals = [f"rank {r}: {why}" for r, why in enumerate(reasons) if why is not None]
    if refusals:
        if rank == 0:
            logger.info("tensor-parallel all-reduce: NCCL (%s)", "; ".join(refusals))
        return None
    peer = PeerAllReduce(group, device, dtype, max_bytes)
    if rank == 0:
        logger.info(
            "tensor-parallel all-reduce: one-shot peer-to-peer up to %d bytes, NCCL above",
            max_bytes,
        )
    return peer
