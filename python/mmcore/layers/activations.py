"""Activation functions by the names HF configs use (``hidden_act``, ``projector_hidden_act``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mmcore.layers.attention import select_op


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_new": _gelu_new,
    "quick_gelu": _quick_gelu,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the activation called ``name`` in HF configs.

    Raises:
        ValueError: for a name mmcore does not implement.
    """
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}"
        ) from None


def get_gated_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x [T, 2I] -> act(x[:, :I]) * x[:, I:]`` for a gated MLP's fused gate/up output.

    SiLU runs as one fused kernel on CUDA; other activations as two torch ops.

    Raises:
        ValueError: for an activation mmcore does not implement.
    """
    act = get_activation(name)
    if act is F.silu:
        return lambda x: select_op("silu_and_mul", x)(x)

    def gated(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return act(x[..., :half]) * x[..., half:]

    return gated
