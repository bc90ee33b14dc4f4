"""Copy HF-named checkpoint tensors into a module's parameters, strictly.

A :class:`MergedLinear` holds several HF projections stacked along its output dim (q/k/v, or
gate/up) so one GEMM runs where the checkpoint has several; its shards load under their HF
names (``...self_attn.q_proj.weight`` -> rows of ``...self_attn.qkv_proj.weight``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from mmcore.layers.sharded_weights import WeightTarget, weight_shape
from mmcore.quantization.apply import prepare_marked_checkpoint


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

    def weight_targets(self, name: str) -> dict[str, WeightTarget]:
        """HF shard name (a sibling of this module) -> its rows of the merged parameters."""
        parent = name.rpartition(".")[0]
        prefix = f"{parent}." if parent else ""
        targets = {}
        for shard, (offset, size) in self.shard_rows.items():
            for kind, param in (("weight", self.weight), ("bias", self.bias)):
                if param is not None:
                    dest = param.narrow(0, offset, size)
                    targets[f"{prefix}{shard}.{kind}"] = WeightTarget(
                        dest, f"{name}.{kind}", tuple(dest.shape)
                    )
        return targets


def collect_weight_targets(module: nn.Module) -> dict[str, WeightTarget]:
    """Checkpoint-style name -> destination on this rank, for every parameter of ``module``.

    Modules with a ``weight_targets(name)`` method (merged and tensor-parallel layers) name
    their own checkpoint tensors and slices; any other parameter takes its tensor whole.
    """
    targets: dict[str, WeightTarget] = {}
    covered: set[str] = set()
    for name, sub in module.named_modules():
        if hasattr(sub, "weight_targets"):
            targets.update(sub.weight_targets(name))
            prefix = f"{name}." if name else ""
            covered.update(prefix + p for p, _ in sub.named_parameters())
    for name, param in module.named_parameters():
        if name not in covered:
            targets[name] = WeightTarget.whole(param, name)
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
        module: the model; its ``named_parameters()`` names are the targets, and the names
            its merged / tensor-parallel layers give (:func:`collect_weight_targets`).
        weights: (checkpoint name, tensor or :class:`LazyWeight`) pairs; only the slice this
            rank keeps is read from a lazy one.
        rename: checkpoint name -> parameter name, or None for a tensor the model does not use
            on purpose (e.g. a vision layer past the last feature layer).

    Raises:
        WeightLoadError: naming the missing and unexpected weights, or a shape mismatch.
    """
    prepare_marked_checkpoint(module, rename)  # FP8 checkpoints: e4m3 + scale parameters
    targets = collect_weight_targets(module)
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, source in weights:
        target_name = rename(name)
        if target_name is None:
            continue
        target = targets.get(target_name)
        if target is None:
            unexpected.append(name)
            continue
        if not target.fits(weight_shape(source)):
            raise WeightLoadError(
                f"weight {name} has shape {weight_shape(source)}, model expects {target.full_shape}"
            )
        with torch.no_grad():
            target.dest.copy_(target.read(source))
        loaded.add(target_name)
    missing = set(targets) - loaded
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing weights: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected weights: {_preview(unexpected)}")
        raise WeightLoadError("checkpoint does not match the model; " + "; ".join(parts))
