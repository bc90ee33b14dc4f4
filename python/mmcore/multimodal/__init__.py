"""Multimodal input handling: per-model processors and the model/processor registry."""

from mmcore.multimodal.processor import MultiModalProcessor
from mmcore.multimodal.registry import (
    get_model_class,
    get_processor_class,
    register_model,
    supported_model_types,
)

__all__ = [
    "MultiModalProcessor",
    "get_model_class",
    "get_processor_class",
    "register_model",
    "supported_model_types",
]
