"""Where a checkpoint tensor goes in a (possibly tensor-parallel) model, and reading just that.

A layer that shards or merges its parameters says, per checkpoint tensor, which slice of it this
rank keeps (:class:`WeightTarget`). The loader reads only that slice: checkpoint tensors arrive
as safetensors slices (:class:`LazyWeight`), so no rank reads the whole checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class WeightTarget:
    """One checkpoint tensor's destination on this rank.

    Attributes:
        dest: the view of a parameter the slice is copied into.
        param_name: name of that parameter (for missing-weight reports).
        full_shape: shape the checkpoint tensor must have.
        shard_dim: dimension of the checkpoint tensor this rank takes a range of (None: all).
        shard_start: first index of that range.
        row_ranges: instead of one range, several (start, length) row ranges, concatenated
            (this rank's heads of each of q, k and v stacked in one checkpoint tensor).
    """

    dest: torch.Tensor
    param_name: str
    full_shape: tuple[int, ...]
    shard_dim: int | None = None
    shard_start: int = 0
    row_ranges: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def whole(cls, param: torch.Tensor, param_name: str) -> WeightTarget:
        """The checkpoint tensor is the parameter, unsharded."""
        return cls(param, param_name, tuple(param.shape))

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a checkpoint tensor of ``shape`` is the one this target takes."""
        return tuple(shape) == self.full_shape

    def read(self, source) -> torch.Tensor:
        """This rank's part of ``source`` (a tensor or a :class:`LazyWeight`)."""
        if self.row_ranges is not None:
            return torch.cat([source[start : start + n] for start, n in self.row_ranges])
        if self.shard_dim is None:
            return source[...] if isinstance(source, LazyWeight) else source
        length = self.dest.shape[self.shard_dim]
        index = [slice(None)] * len(self.full_shape)
        index[self.shard_dim] = slice(self.shard_start, self.shard_start + length)
        return source[tuple(index)]


@dataclass
class ScaleTarget(WeightTarget):
    """A quantisation scale: per channel (``[rows, 1]`` or ``[rows]`` in the checkpoint, this
    rank's rows read into a 1-D ``dest``) or per tensor (any one-element tensor, broadcast into
    ``dest``: a merged layer keeps one scale per row, so each shard's scalar fills its rows)."""

    per_tensor: bool = False

    def fits(self, shape: tuple[int, ...]) -> bool:
        shape = tuple(shape)
        if self.per_tensor:
            return math.prod(shape) == 1
        return shape in (self.full_shape, self.full_shape[:1])

    def read(self, source) -> torch.Tensor:
        if self.per_tensor:
            return (source[...] if isinstance(source, LazyWeight) else source).reshape(())
        start = self.shard_start
        return source[start : start + self.dest.shape[0]].reshape(-1)


class LazyWeight:
    """A checkpoint tensor not read yet: its shape, and indexing reads only the slice asked for.

    Args:
        handle: an open ``safetensors.safe_open`` file.
        name: the tensor's name in it.
    """

    def __init__(self, handle, name: str) -> None:
        self._handle, self._name = handle, name
        self._slice = handle.get_slice(name)
        self.shape = tuple(self._slice.get_shape())

    def __getitem__(self, index) -> torch.Tensor:
        if index is Ellipsis or not self.shape:
            return self._handle.get_tensor(self._name)
        return self._slice[index]


def weight_shape(source) -> tuple[int, ...]:
    """Shape of a checkpoint tensor or :class:`LazyWeight` without reading it."""
    return tuple(source.shape)
