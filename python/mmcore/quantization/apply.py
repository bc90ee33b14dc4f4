"""Turning a model's linear layers into FP8, around weight loading.

1. ``mark_fp8_checkpoint(model, scheme, names)`` before ``model.load_weights``: the checkpoint's
   tensor names say which layers it stores in FP8 (a layer whose projections have scales);
   ``load_named_weights`` calls :func:`prepare_fp8_checkpoint_layers` with the names as the
   model renames them, so those layers get e4m3 and scale parameters before any tensor is read.
2. ``finish_quantization(model, config)`` after loading: fold checkpoint scales into the GEMM's
   form, then quantise the remaining layers online (the language model's when no FP8 checkpoint
   was given, the encoder's with ``quantize_vision``). The LM head and embeddings are no linear
   layers of :mod:`mmcore.layers.linear` and stay in the model dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from mmcore.layers.fp8_linear import Fp8CheckpointScheme, Fp8LinearMixin
from mmcore.quantization.config import QuantizationConfig

_MARK = "_mmcore_fp8_checkpoint"


@dataclass(frozen=True)
class _CheckpointMark:
    scheme: Fp8CheckpointScheme
    names: frozenset[str]


def fp8_layers(model: nn.Module) -> list[tuple[str, Fp8LinearMixin]]:
    """(name, layer) of every linear layer that can hold FP8 weights."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Fp8LinearMixin)]


def language_model_prefix(model: nn.Module) -> str:
    """Module-name prefix of the language model (``""``: the whole model is one)."""
    return "language_model." if hasattr(model, "language_model") else ""


def mark_fp8_checkpoint(model: nn.Module, scheme: Fp8CheckpointScheme, names: Iterable[str]):
    """Tell ``load_named_weights`` that ``model``'s checkpoint (tensor ``names``) is FP8."""
    setattr(model, _MARK, _CheckpointMark(scheme, frozenset(names)))


def prepare_marked_checkpoint(model: nn.Module, rename: Callable[[str], str | None]) -> None:
    """Called by ``load_named_weights``: prepare the FP8 layers of a marked model (once)."""
    mark = getattr(model, _MARK, None)
    if mark is None:
        return
    delattr(model, _MARK)
    renamed = {rename(name) for name in mark.names} - {None}
    prepare_fp8_checkpoint_layers(model, renamed, mark.scheme)


def prepare_fp8_checkpoint_layers(
    model: nn.Module, names: set[str], scheme: Fp8CheckpointScheme
) -> int:
    """Give e4m3 + scale parameters to each layer whose projections have scales in ``names``.

    Args:
        model: the model, before its weights load.
        names: the checkpoint's tensor names, renamed to the model's (``...q_proj.weight_scale``).
        scheme: how the checkpoint stores its FP8 layers.

    Returns:
        The number of layers made FP8.

    Raises:
        ValueError: a merged layer (q/k/v, gate/up) whose projections are not all FP8, or no
            FP8 layer at all (a config that declares FP8 over unquantised weights).
    """
    count = 0
    for name, layer in fp8_layers(model):
        shards = layer._scale_shards(name)
        scaled = [s.prefix + scheme.scale_name in names for s in shards]
        if all(scaled):
            layer.prepare_fp8_checkpoint(scheme, name)
            count += 1
        elif any(scaled):
            raise ValueError(
                f"{name}: the checkpoint has FP8 scales ({scheme.scale_name}) for only some of "
                f"its projections {[s.prefix.rstrip('.') for s in shards]}"
            )
    if not count:
        raise ValueError(
            f"the checkpoint declares FP8 weights but has no {scheme.scale_name} tensor for any "
            "linear layer"
        )
    return count


def finish_quantization(model: nn.Module, config: QuantizationConfig) -> None:
    """After loading: finish checkpoint FP8 layers, then quantise online what ``config`` asks.

    Raises:
        ValueError: online FP8 for a model whose language model has no FP8-capable layers
            (built from ``nn.Linear``, e.g. an out-of-tree model), or ``quantize_vision`` on a
            model whose encoder has none.
    """
    layers = fp8_layers(model)
    for _, layer in layers:
        layer.finish_fp8_checkpoint()
    lm_prefix = language_model_prefix(model)
    in_lm = [layer for name, layer in layers if name.startswith(lm_prefix)]
    encoder = [layer for name, layer in layers if not name.startswith(lm_prefix)]
    if config.checkpoint is None:
        if not in_lm:
            raise ValueError(
                f"quantization='fp8': {type(model).__name__} has no linear layers that run FP8 "
                "(they must be mmcore.layers.linear layers)"
            )
        for layer in in_lm:
            layer.quantize_fp8()
    if config.quantize_vision:
        if not encoder:
            raise ValueError(
                f"quantize_vision: {type(model).__name__}'s encoder has no layers that run FP8"
            )
        for layer in encoder:
            layer.quantize_fp8()
