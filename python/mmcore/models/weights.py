"""Copy HF-named checkpoint tensors into a module's parameters, strictly.

A :class:`MergedLinear` holds several HF projections stacked along its output dim (q/k/v, or
gate/up) so one GEMM runs where the checkpoint has several; its shards load under their HF
names (``...self_attn.q_proj.weight`` -> rows of ``...self_attn.qkv_proj.weight``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


class WeightLoadError(ValueError):
    """A checkpoint's tensors do not fit the model (missing, unexpected, or wrong shape)."""


class MergedLinear(nn.Linear):
    """A linear layer whose output rows are the concatenated outputs of named HF projections.

    Args:
        in_features: input size.
        shards: HF projection name -> its output size, in output order (e.g.
            ``{"q_proj": 4096, "k_proj": 4096, "v_proj": 4096}``).
        bias, dtype, device: as for ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        shards: dict[str, int],
        *,
        bias: bool,
        dtype: torch.dtype,
        device: torch.device,
    ):
        super().__init__(in_features, sum(shards.values()), bias=bias, dtype=dtype, device=device)
        self.shard_rows: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in shards.items():
            self.shard_rows[name] = (offset, size)
            offset += size
        self.shard_sizes = list(shards.values())


def _shard_targets(module: nn.Module) -> dict[str, tuple[str, int, int]]:
    """HF shard parameter name -> (merged parameter name, first row, rows)."""
    targets = {}
    for name, sub in module.named_modules():
        if not isinstance(sub, MergedLinear):
            continue
        parent = name.rpartition(".")[0]
        prefix = f"{parent}." if parent else ""
        for shard, (offset, size) in sub.shard_rows.items():
            for kind, param in (("weight", sub.weight), ("bias", sub.bias)):
                if param is not None:
                    targets[f"{prefix}{shard}.{kind}"] = (f"{name}.{kind}", offset, size)
    return targets


def _preview(names: Iterable[str], limit: int = 10) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in total)" if len(names) > limit else "")


def load_named_weights(
    module: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    rename: Callable[[str], str | None],
) -> None:
    """Copy ``weights`` into ``module``'s parameters (cast to their dtype/device).

    Args:
        module: the model; its ``named_parameters()`` names are the targets, and the HF names
            of the shards of its :class:`MergedLinear` layers.
        weights: (checkpoint name, tensor) pairs.
        rename: checkpoint name -> parameter name, or None for a tensor the model does not use
            on purpose (e.g. a vision layer past the last feature layer).

    Raises:
        WeightLoadError: naming the missing and unexpected weights, or a shape mismatch.
    """
    params = dict(module.named_parameters())
    shards = _shard_targets(module)
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, tensor in weights:
        target = rename(name)
        if target is None:
            continue
        if target in shards:
            merged, offset, rows = shards[target]
            param = params[merged].narrow(0, offset, rows)
        else:
            param = params.get(target)
        if param is None:
            unexpected.append(name)
            continue
        if tuple(param.shape) != tuple(tensor.shape):
            raise WeightLoadError(
                f"weight {name} has shape {tuple(tensor.shape)}, model expects {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(tensor)
        loaded.add(target)
    merged_params = {merged for merged, _, _ in shards.values()}
    expected = (set(params) - merged_params) | set(shards)
    missing = expected - loaded
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing weights: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected weights: {_preview(unexpected)}")
        raise WeightLoadError("checkpoint does not match the model; " + "; ".join(parts))
