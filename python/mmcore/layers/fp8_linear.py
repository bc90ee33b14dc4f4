"""FP8 weights for the tensor-parallel linear layers (:mod:`mmcore.layers.linear`).

A layer becomes FP8 in one of two ways:

- online: :meth:`Fp8LinearMixin.quantize_fp8` turns its loaded weight into e4m3 with one
  float32 scale per output channel (row-parallel shards take the row's maximum over all ranks,
  so every rank count gives the same weights);
- from an FP8 checkpoint: :meth:`Fp8LinearMixin.prepare_fp8_checkpoint` swaps in e4m3 and scale
  parameters *before* loading, so ``weight_targets`` names the checkpoint's scale tensors;
  :meth:`Fp8LinearMixin.finish_fp8_checkpoint` then folds per-tensor / block-wise scales into
  the per-channel form the GEMM takes, and a merged layer's static input scales into one.

Either way the forward is :func:`mmcore.layers.fp8.fp8_linear` (dynamic per-token activation
scales unless the checkpoint has static ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmcore.distributed.communication import all_reduce_max
from mmcore.kernels.gemv_ops import decode_linear
from mmcore.layers.fp8 import (
    FP8_DTYPE,
    dequantize_blocks,
    fp8_linear,
    quantize_with_scale,
    scale_from_amax,
)
from mmcore.layers.sharded_weights import ScaleTarget, WeightTarget


@dataclass(frozen=True)
class Fp8CheckpointScheme:
    """How an FP8 checkpoint stores a layer's weight.

    Attributes:
        scale_name: the weight scale's tensor name beside ``weight``: ``weight_scale``
            (compressed-tensors) or ``weight_scale_inv`` (transformers' ``fp8``). Both multiply:
            ``W = weight * scale``.
        strategy: ``"channel"`` (``[N, 1]``), ``"tensor"`` (one scalar per projection) or
            ``"block"`` (``[ceil(N/bn), ceil(K/bk)]``).
        block: ``(bn, bk)`` for the block strategy.
        static_input: the checkpoint has a per-tensor ``input_scale`` per projection.
    """

    scale_name: str
    strategy: str
    block: tuple[int, int] | None = None
    static_input: bool = False


@dataclass(frozen=True)
class ScaleShard:
    """One checkpoint projection's output rows in a layer (a merged layer has several).

    Attributes:
        prefix: the projection's checkpoint name prefix (``"...q_proj."``).
        full_rows: its rows in the checkpoint.
        start: this rank's first row of it.
        local: this rank's rows of it.
        offset: where those rows start in the layer's weight.
    """

    prefix: str
    full_rows: int
    start: int
    local: int
    offset: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Fp8LinearMixin:
    """FP8 state and loading targets for a layer with ``weight [rows, cols]`` and ``bias``.

    The layer implements ``_scale_shards(name)``. A row-parallel layer sets ``_col_range =
    (full input columns, this rank's first column)``; column-parallel layers leave it None.
    """

    _col_range: tuple[int, int] | None = None

    def _init_fp8(self) -> None:
        self.register_parameter("weight_scale", None)  # float32 [rows] once FP8
        self.register_parameter("input_scale", None)  # float32 scalar of static activations
        self._fp8_scheme: Fp8CheckpointScheme | None = None
        self._block_scales: list[nn.Parameter] = []

    @property
    def is_fp8(self) -> bool:
        """Whether the weight is e4m3 (scaled GEMM) rather than the model dtype."""
        return self.weight.dtype == FP8_DTYPE

    def _linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self.is_fp8:
            return decode_linear(x, self.weight, bias)
        return fp8_linear(x, self.weight, self.weight_scale, bias, self.input_scale)

    # -- online ------------------------------------------------------------------------------
    def _set_fp8_weight(self, weight: torch.Tensor) -> None:
        """Quantise float ``weight`` (this rank's ``[rows, cols]``) per output channel."""
        amax = weight.abs().amax(dim=1).float()
        if self._col_range is not None:
            all_reduce_max(amax)  # a row-parallel shard holds part of each output row
        scale = scale_from_amax(amax)
        self.weight = nn.Parameter(quantize_with_scale(weight, scale[:, None]), False)
        self.weight_scale = nn.Parameter(scale, False)

    def quantize_fp8(self) -> None:
        """Replace the loaded weight by e4m3 and per-output-channel scales (no-op if FP8)."""
        if not self.is_fp8:
            self._set_fp8_weight(self.weight.detach())

    # -- FP8 checkpoints ---------------------------------------------------------------------
    def prepare_fp8_checkpoint(self, scheme: Fp8CheckpointScheme, name: str) -> None:
        """Swap in e4m3 and scale parameters that the checkpoint's tensors load into.

        Args:
            scheme: how the checkpoint stores this layer.
            name: this module's name (for error messages).

        Raises:
            ValueError: block-wise scales whose blocks do not align with this rank's shard.
        """
        rows, cols = self.weight.shape
        device = self.weight.device
        self.weight = nn.Parameter(torch.empty(rows, cols, dtype=FP8_DTYPE, device=device), False)
        f32 = dict(dtype=torch.float32, device=device)
        shards = self._scale_shards("")
        if scheme.strategy == "block":
            self._block_scales = []
            for i, shape in enumerate(self._block_shapes(scheme.block, shards, name)):
                param = nn.Parameter(torch.empty(shape, **f32), False)
                self.register_parameter(f"block_scale_{i}", param)
                self._block_scales.append(param)
        else:
            self.weight_scale = nn.Parameter(torch.empty(rows, **f32), False)
        if scheme.static_input:
            self.input_scale = nn.Parameter(torch.empty(len(shards), **f32), False)
        self._fp8_scheme = scheme

    def _block_shapes(self, block, shards: list[ScaleShard], name: str) -> list[tuple[int, int]]:
        bn, bk = block
        rows, cols = self.weight.shape
        shapes = []
        for shard in shards:
            if self._col_range is None:
                span, first, full = shard.local, shard.start, shard.full_rows
                unit = bn
            else:
                (full, first), span, unit = self._col_range, cols, bk
            if first % unit or (span % unit and first + span != full):
                raise ValueError(
                    f"{name}: block-wise FP8 scales ({bn}x{bk}) do not align with this rank's "
                    f"shard (elements {first}..{first + span} of {full}); use a "
                    "tensor_parallel_size that splits the layer on block boundaries"
                )
            shapes.append((_ceil_div(shard.local, bn), _ceil_div(cols, bk)))
        return shapes

    def _fp8_targets(self, name: str) -> dict[str, WeightTarget]:
        """Checkpoint scale names -> destinations (empty unless an FP8 checkpoint is loading)."""
        scheme = self._fp8_scheme
        if scheme is None:
            return {}
        targets: dict[str, WeightTarget] = {}
        for i, shard in enumerate(self._scale_shards(name)):
            key = shard.prefix + scheme.scale_name
            if scheme.strategy == "block":
                targets[key] = self._block_target(i, shard, name)
            else:
                dest = self.weight_scale.narrow(0, shard.offset, shard.local)
                per_tensor = scheme.strategy == "tensor"
                full = (1,) if per_tensor else (shard.full_rows, 1)
                targets[key] = ScaleTarget(
                    dest, f"{name}.weight_scale", full, 0, shard.start, per_tensor=per_tensor
                )
            if scheme.static_input:
                dest = self.input_scale.narrow(0, i, 1)
                targets[shard.prefix + "input_scale"] = ScaleTarget(
                    dest, f"{name}.input_scale", (1,), per_tensor=True
                )
        return targets

    def _block_target(self, i: int, shard: ScaleShard, name: str) -> WeightTarget:
        bn, bk = self._fp8_scheme.block
        param = self._block_scales[i]
        if self._col_range is None:
            full = (_ceil_div(shard.full_rows, bn), param.shape[1])
            return WeightTarget(param, f"{name}.block_scale_{i}", full, 0, shard.start // bn)
        full_cols, first_col = self._col_range
        full = (param.shape[0], _ceil_div(full_cols, bk))
        return WeightTarget(param, f"{name}.block_scale_{i}", full, 1, first_col // bk)

    def finish_fp8_checkpoint(self) -> None:
        """After loading: block-wise weights -> per-channel, static input scales -> one scalar."""
        scheme = self._fp8_scheme
        if scheme is None:
            return
        if scheme.strategy == "block":
            weight = torch.empty(self.weight.shape, dtype=torch.float32, device=self.weight.device)
            for i, shard in enumerate(self._scale_shards("")):
                rows = slice(shard.offset, shard.offset + shard.local)
                weight[rows] = dequantize_blocks(
                    self.weight[rows], self._block_scales[i], scheme.block
                )
            for i in range(len(self._block_scales)):
                delattr(self, f"block_scale_{i}")
            self._block_scales = []
            self._set_fp8_weight(weight)
        if scheme.static_input:  # the projections of a merged layer share their input
            self.input_scale = nn.Parameter(self.input_scale.max().reshape(()), False)
        self._fp8_scheme = None
