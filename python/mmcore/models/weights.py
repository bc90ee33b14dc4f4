"""Copy HF-named checkpoint tensors into a module's parameters, strictly."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


class WeightLoadError(ValueError):
    """A checkpoint's tensors do not fit the model (missing, unexpected, or wrong shape)."""


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
        module: the model; its ``named_parameters()`` names are the targets.
        weights: (checkpoint name, tensor) pairs.
        rename: checkpoint name -> parameter name, or None for a tensor the model does not use
            on purpose (e.g. a vision layer past the last feature layer).

    Raises:
        WeightLoadError: naming the missing and unexpected weights, or a shape mismatch.
    """
    params = dict(module.named_parameters())
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, tensor in weights:
        target = rename(name)
        if target is None:
            continue
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
    missing = set(params) - loaded
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing weights: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected weights: {_preview(unexpected)}")
        raise WeightLoadError("checkpoint does not match the model; " + "; ".join(parts))
