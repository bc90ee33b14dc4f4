"""FP8 weights: which checkpoints and options mmcore accepts (:mod:`.config`) and how a model's
linear layers become FP8 (:mod:`.apply`). User guide: docs/quantization.md."""

from mmcore.quantization.config import (
    QUANTIZATION_METHODS,
    QuantizationConfig,
    resolve_quantization,
)

__all__ = ["QUANTIZATION_METHODS", "QuantizationConfig", "resolve_quantization"]
