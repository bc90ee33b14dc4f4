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

A row-parallel layer followed by a residual add and an RMSNorm (every decoder block, twice)
takes :meth:`PeerAllReduce.add_rms_norm` instead: mmcore's ``peer_add_rms_norm`` kernel
(cpp/kernels/peer_norm.cu) pushes the rows into every rank's second symmetric buffer, meets the
peers at a signal barrier (one-way epoch stores, no atomic round trip) and reduces, adds and
normalizes in the same launch.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.distributed as dist

from mmcore.kernels.cuda_module import DTYPE_CODES, kernels_module, stream_handle
from mmcore.kernels.fused_ops import as_rows

logger = logging.getLogger(__name__)

# Largest tensor (bytes) reduced here; above it NCCL is used.
DEFAULT_MAX_BYTES = 8 << 20
# Largest tensor (bytes) of the fused all-reduce + add + norm (decode batches up to 256 rows of
# 4096 bf16); above it the all-reduce and the fused add + norm run as two kernels.
DEFAULT_NORM_MAX_BYTES = 2 << 20
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

    def __init__(
        self,
        group: dist.ProcessGroup,
        device: torch.device,
        dtype,
        max_bytes: int,
        norm_max_bytes: int = DEFAULT_NORM_MAX_BYTES,
    ):
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

        # The fused all-reduce + add + norm: its own buffer and signal pads.
        self._kernels = kernels_module()
        if self._kernels is None or not hasattr(self._kernels, "peer_add_rms_norm"):
            raise RuntimeError(
                "mmcore._kernels lacks peer_add_rms_norm (a stale build?): rebuild the package"
            )
        self._dtype_code = DTYPE_CODES[dtype]
        self.norm_half_numel = norm_max_bytes // self.buffer.element_size()
        # Two halves (alternate calls) of one slot per sending rank: each rank pushes its rows
        # into its slot of every rank's buffer, then sums its own buffer's slots.
        world = self.handle.world_size
        self.norm_buffer = symm_mem.empty(
            2 * world * self.norm_half_numel, dtype=dtype, device=device
        )
        self.norm_handle = symm_mem.rendezvous(self.norm_buffer, self.group_name)
        blocks = int(self._kernels.PEER_NORM_BLOCKS)
        pad_slots = self.norm_handle.signal_pad_size // 4
        if blocks * self.norm_handle.world_size > pad_slots:
            raise RuntimeError(
                f"symmetric memory signal pads hold {pad_slots} slots; the fused all-reduce "
                f"needs {blocks} x {self.norm_handle.world_size}"
            )
        # Which half each block stages into next: advanced by the kernel on the device.
        self._call_counters = torch.zeros(blocks, dtype=torch.int32, device=device)
        # Bytes from each rank's mapped allocation to the buffer (the same on every rank).
        rank = self.norm_handle.rank
        self._norm_offset = self.norm_buffer.data_ptr() - self.norm_handle.buffer_ptrs[rank]

    def takes(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is reduced here (dtype, size, layout) rather than by NCCL."""
        return (
            tensor.dtype == self.dtype
            and tensor.numel() <= self.max_numel
            and tensor.is_cuda
            and tensor.is_contiguous()
        )

    def takes_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether :meth:`add_rms_norm` takes these (dtype, size, 16-byte rows) or the caller
        should reduce and normalize in two steps."""
        return (
            x.dtype == self.dtype
            and residual.dtype == self.dtype
            and weight.dtype == self.dtype
            and x.is_cuda
            and x.numel() <= self.norm_half_numel
            and residual.shape == x.shape
            and all(_rows_aligned(t) for t in (x, residual, weight))
        )

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rms_norm(s) * weight, s)`` with ``s = residual + sum of x over the ranks``.

        Every rank must call it with the same shapes, in the same order (it is a collective).
        """
        rows = as_rows(x)
        res = as_rows(residual)
        w = weight.contiguous()
        out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
        summed = torch.empty_like(out)
        handle = self.norm_handle
        self._kernels.peer_add_rms_norm(
            x=rows.data_ptr(), x_stride=rows.stride(0), residual=res.data_ptr(),
            residual_stride=res.stride(0), weight=w.data_ptr(), out=out.data_ptr(),
            out_stride=out.stride(0), summed=summed.data_ptr(), summed_stride=summed.stride(0),
            num_tokens=rows.shape[0], hidden=rows.shape[1], eps=eps,
            buffers=handle.buffer_ptrs_dev, signal_pads=handle.signal_pad_ptrs_dev,
            buffer_offset=self._norm_offset, half_elems=self.norm_half_numel,
            call_counters=self._call_counters.data_ptr(), rank=handle.rank,
            world_size=handle.world_size, dtype=self._dtype_code,
            stream=stream_handle(x),
        )  # fmt: skip
        return out.view(x.shape), summed.view(x.shape)

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


def _rows_aligned(t: torch.Tensor) -> bool:
    """Whether ``t``'s rows start on 16-byte boundaries with a contiguous last dim."""
    size = t.element_size()
    row = t.stride(-2) if t.dim() > 1 else t.shape[-1]
    return (
        t.stride(-1) == 1
        and t.data_ptr() % 16 == 0
        and (t.shape[-1] * size) % 16 == 0
        and (row * size) % 16 == 0
    )


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
