"""Tensor-parallel linear layers (Megatron style) that load HF weights shard by shard.

A column-parallel layer keeps a range of output rows on each rank (its output is that rank's
share: heads of attention, a share of the MLP's intermediate size); a row-parallel layer keeps
the matching input columns and sums its partial outputs over the ranks (one all-reduce). An
attention or MLP block is column then row, so it costs one all-reduce::

    x (full) -> [qkv / gate_up: column] -> local heads / rows -> [o / down: row] -> all-reduce

On one rank every layer computes exactly ``F.linear(x, weight, bias)``, as ``nn.Linear`` does.
Every layer can hold FP8 weights instead (:mod:`mmcore.layers.fp8_linear`): quantised online
per shard, or loaded with their scales from an FP8 checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcore.distributed.communication import all_reduce
from mmcore.distributed.parallel_state import tp_rank, tp_size
from mmcore.layers.fp8_linear import Fp8LinearMixin, ScaleShard
from mmcore.layers.sharded_weights import WeightTarget


def _rank_and_size(disable_tp: bool) -> tuple[int, int]:
    return (0, 1) if disable_tp else (tp_rank(), tp_size())


def divide(total: int, parts: int, what: str) -> int:
    """``total / parts``, or a ValueError naming ``what`` when it does not divide."""
    if total % parts:
        raise ValueError(f"{what} ({total}) is not divisible by tensor_parallel_size ({parts})")
    return total // parts


class _ShardedRowsLinear(Fp8LinearMixin, nn.Module):
    """Output rows = the concatenation of this rank's range of each named checkpoint projection.

    ``shards``: (checkpoint name relative to the parent module, its full rows, this rank's first
    row, this rank's rows). A plain column-parallel layer has one shard named after itself.
    """

    def __init__(self, in_features, shards, *, bias, dtype, device, siblings: bool):
        super().__init__()
        self.in_features = in_features
        self._shards = shards
        self._siblings = siblings  # shard names sit next to this module (q_proj beside qkv_proj)
        rows = sum(local for _, _, _, local in shards)
        self.weight = nn.Parameter(torch.empty(rows, in_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(rows, dtype=dtype, device=device)) if bias else None
        self.shard_sizes = [local for _, _, _, local in shards]
        self._init_fp8()

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(x, self.bias)

    def _scale_shards(self, name: str) -> list[ScaleShard]:
        """This rank's rows of each checkpoint projection, named as in the checkpoint."""
        parent = name.rpartition(".")[0] if self._siblings else name
        prefix = f"{parent}." if parent else ""
        shards, offset = [], 0
        for shard, full_rows, start, local in self._shards:
            shard_prefix = f"{prefix}{shard}." if self._siblings else prefix
            shards.append(ScaleShard(shard_prefix, full_rows, start, local, offset))
            offset += local
        return shards

    def weight_targets(self, name: str) -> dict[str, WeightTarget]:
        """Checkpoint name -> where this rank's rows of it go (``name``: this module's name)."""
        targets = {}
        for shard in self._scale_shards(name):
            for kind, param in (("weight", self.weight), ("bias", self.bias)):
                if param is None:
                    continue
                full_shape = (shard.full_rows, *param.shape[1:])
                dest = param.narrow(0, shard.offset, shard.local)
                targets[shard.prefix + kind] = WeightTarget(
                    dest, f"{name}.{kind}", full_shape, 0, shard.start
                )
        targets.update(self._fp8_targets(name))
        return targets


class ColumnParallelLinear(_ShardedRowsLinear):
    """``nn.Linear`` whose output features are split evenly over the ranks (no communication).

    Args:
        in_features, out_features, bias, dtype, device: as for ``nn.Linear``.
        disable_tp: keep the whole layer on every rank (a replicated module).
    """

    def __init__(self, in_features, out_features, *, bias, dtype, device, disable_tp=False):
        rank, size = _rank_and_size(disable_tp)
        local = divide(out_features, size, "output features")
        super().__init__(
            in_features,
            [("", out_features, rank * local, local)],
            bias=bias,
            dtype=dtype,
            device=device,
            siblings=False,
        )


class MergedColumnParallelLinear(_ShardedRowsLinear):
    """Several checkpoint projections of the same input as one GEMM (gate/up), each split evenly.

    Args:
        in_features: input size.
        shards: checkpoint projection name -> its full output size, in output order (e.g.
            ``{"gate_proj": 11008, "up_proj": 11008}``); the names are siblings of this module.
        bias, dtype, device, disable_tp: as for :class:`ColumnParallelLinear`.
    """

    def __init__(
        self, in_features, shards: dict[str, int], *, bias, dtype, device, disable_tp=False
    ):
        rank, size = _rank_and_size(disable_tp)
        parts = []
        for name, rows in shards.items():
            local = divide(rows, size, f"{name} output features")
            parts.append((name, rows, rank * local, local))
        super().__init__(in_features, parts, bias=bias, dtype=dtype, device=device, siblings=True)


def kv_heads_per_rank(num_kv_heads: int, size: int) -> tuple[int, int]:
    """(KV heads on each rank, ranks holding a copy of each KV head) for ``size`` ranks.

    Raises:
        ValueError: when neither count divides the other.
    """
    if num_kv_heads >= size:
        return divide(num_kv_heads, size, "num_key_value_heads"), 1
    if size % num_kv_heads:
        raise ValueError(
            f"tensor_parallel_size ({size}) must divide or be a multiple of "
            f"num_key_value_heads ({num_kv_heads})"
        )
    return 1, size // num_kv_heads


class QKVParallelLinear(_ShardedRowsLinear):
    """Fused q/k/v projection sharded by heads: each rank keeps its query heads and the KV heads
    they read. With fewer KV heads than ranks, each KV head is replicated on
    ``size / num_kv_heads`` consecutive ranks (GQA groups stay whole on a rank).

    Args:
        hidden_size: input size.
        head_dim: size of one head.
        num_heads, num_kv_heads: the model's query and key/value heads.
        bias, dtype, device, disable_tp: as for :class:`ColumnParallelLinear`.
        names: checkpoint names of the q, k and v projections (siblings of this module).

    Attributes:
        num_local_heads, num_local_kv_heads: heads this rank computes.
    """

    def __init__(
        self,
        hidden_size,
        head_dim,
        num_heads,
        num_kv_heads,
        *,
        bias,
        dtype,
        device,
        disable_tp=False,
        names=("q_proj", "k_proj", "v_proj"),
    ):
        rank, size = _rank_and_size(disable_tp)
        q_local = divide(num_heads, size, "num_attention_heads")
        kv_local, replicas = kv_heads_per_rank(num_kv_heads, size)
        kv_first = (rank // replicas) * kv_local
        q_name, k_name, v_name = names
        parts = [(q_name, num_heads * head_dim, rank * q_local * head_dim, q_local * head_dim)]
        for kv_name in (k_name, v_name):
            parts.append(
                (kv_name, num_kv_heads * head_dim, kv_first * head_dim, kv_local * head_dim)
            )
        super().__init__(hidden_size, parts, bias=bias, dtype=dtype, device=device, siblings=True)
        self.num_local_heads, self.num_local_kv_heads = q_local, kv_local


class StackedQKVParallelLinear(nn.Module):
    """A q/k/v projection stored as ONE checkpoint tensor (rows: all q heads, all k, all v; e.g.
    vision towers' ``attn.qkv``), sharded by heads: each rank keeps its heads of each third.

    Args:
        hidden_size: input size.
        num_heads: heads of each of q, k and v.
        head_dim: size of one head.
        bias, dtype, device, disable_tp: as for :class:`ColumnParallelLinear`.

    Attributes:
        num_local_heads: heads this rank computes.
    """

    def __init__(self, hidden_size, num_heads, head_dim, *, bias, dtype, device, disable_tp=False):
        super().__init__()
        rank, size = _rank_and_size(disable_tp)
        self.num_local_heads = divide(num_heads, size, "num_heads")
        width, local = num_heads * head_dim, self.num_local_heads * head_dim
        self._ranges = tuple((part * width + rank * local, local) for part in range(3))
        self._full_rows = 3 * width
        self.in_features = hidden_size
        self.weight = nn.Parameter(torch.empty(3 * local, hidden_size, dtype=dtype, device=device))
        self.bias = (
            nn.Parameter(torch.empty(3 * local, dtype=dtype, device=device)) if bias else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def weight_targets(self, name: str) -> dict[str, WeightTarget]:
        """Checkpoint name -> this rank's rows of q, k and v (``name``: this module's name)."""
        prefix = f"{name}." if name else ""
        targets = {}
        for kind, param in (("weight", self.weight), ("bias", self.bias)):
            if param is not None:
                full = (self._full_rows, *param.shape[1:])
                targets[prefix + kind] = WeightTarget(
                    param, prefix + kind, full, row_ranges=self._ranges
                )
        return targets


class RowParallelLinear(Fp8LinearMixin, nn.Module):
    """``nn.Linear`` whose input features are split over the ranks; the partial products are
    summed by one all-reduce (the bias is added once, by rank 0).

    Args:
        in_features, out_features, bias, dtype, device: as for ``nn.Linear``.
        disable_tp: keep the whole layer on every rank.
        reduce_results: sum the ranks' partial products here (False: return this rank's
            partial product; the caller reduces it, e.g. fused with the next norm).
    """

    def __init__(
        self,
        in_features,
        out_features,
        *,
        bias,
        dtype,
        device,
        disable_tp=False,
        reduce_results=True,
    ):
        super().__init__()
        self._rank, self._size = _rank_and_size(disable_tp)
        self.reduce_results = reduce_results
        local = divide(in_features, self._size, "input features")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, local, dtype=dtype, device=device))
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device)) if bias else None
        )
        self._init_fp8()
        if self._size > 1:
            self._col_range = (in_features, self._rank * local)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._linear(x, self.bias if self._rank == 0 else None)
        return all_reduce(out) if self._size > 1 and self.reduce_results else out

    def _scale_shards(self, name: str) -> list[ScaleShard]:
        """One projection, every output row on every rank."""
        prefix = f"{name}." if name else ""
        return [ScaleShard(prefix, self.out_features, 0, self.out_features, 0)]

    def weight_targets(self, name: str) -> dict[str, WeightTarget]:
        """Checkpoint name -> this rank's input columns (the bias whole)."""
        prefix = f"{name}." if name else ""
        local = self.weight.shape[1]
        full = (self.out_features, self.in_features)
        targets = {
            f"{prefix}weight": WeightTarget(
                self.weight, f"{prefix}weight", full, 1, self._rank * local
            )
        }
        if self.bias is not None:
            targets[f"{prefix}bias"] = WeightTarget.whole(self.bias, f"{prefix}bias")
        targets.update(self._fp8_targets(name))
        return targets
