"""Which mmcore model class and processor class serve each HF ``config.model_type``.

Built-in families are named by import path and imported on first use, so that
``import mmcore`` stays light (no torch/transformers import). A family is one folder under
``mmcore/models/`` (model code and its processor) plus one line here; out-of-tree families
call :func:`register_model` instead (``docs/adding_a_model.md``).
"""

from __future__ import annotations

import importlib

_BUILTIN: dict[str, tuple[str, str]] = {
    # text-only: the base processor accepts no modality
    "llama": (
        "mmcore.models.llama:LlamaForCausalLM",
        "mmcore.multimodal.processor:MultiModalProcessor",
    ),
    "llava": ("mmcore.models.llava:LlavaModel", "mmcore.multimodal.llava:LlavaMultiModalProcessor"),
    "qwen2_audio": (
        "mmcore.models.qwen2_audio:Qwen2AudioModel",
        "mmcore.models.qwen2_audio.processor:Qwen2AudioMultiModalProcessor",
    ),
    "whisper": (
        "mmcore.models.whisper:WhisperModel",
        "mmcore.models.whisper.processor:WhisperMultiModalProcessor",
    ),
    "llava_next": (
        "mmcore.models.llava_next:LlavaNextModel",
        "mmcore.multimodal.llava_next:LlavaNextMultiModalProcessor",
    ),
    "qwen2_vl": (
        "mmcore.models.qwen2_vl:Qwen2VLModel",
        "mmcore.models.qwen2_vl.processor:Qwen2VLMultiModalProcessor",
    ),
    "qwen2_5_vl": (
        "mmcore.models.qwen2_vl:Qwen2VLModel",
        "mmcore.models.qwen2_vl.processor:Qwen2VLMultiModalProcessor",
    ),
    "internvl": (
        "mmcore.models.internvl:InternVLModel",
        "mmcore.models.internvl.processor:InternVLMultiModalProcessor",
    ),
    "gemma3": (
        "mmcore.models.gemma3:Gemma3Model",
        "mmcore.models.gemma3.processor:Gemma3MultiModalProcessor",
    ),
    "gemma3_text": (
        "mmcore.models.gemma3:Gemma3ForCausalLM",
        "mmcore.multimodal.processor:MultiModalProcessor",
    ),
}
_registered: dict[str, tuple[type, type]] = {}


def _import(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def register_model(model_type: str, model_cls: type, processor_cls: type) -> None:
    """Serve checkpoints whose ``config.model_type`` is ``model_type`` with these classes.

    Args:
        model_type: HF ``config.model_type`` (e.g. ``"llava"``); replaces a built-in entry.
        model_cls: an ``nn.Module`` following :class:`mmcore.models.interfaces.MultiModalModel`.
        processor_cls: a :class:`~mmcore.multimodal.processor.MultiModalProcessor` subclass.
    """
    if not isinstance(model_type, str) or not model_type:
        raise ValueError("model_type must be a non-empty string")
    if not isinstance(model_cls, type) or not isinstance(processor_cls, type):
        raise TypeError("model_cls and processor_cls must be classes")
    _registered[model_type] = (model_cls, processor_cls)


def registered_models(model_type: str | None = None) -> dict[str, tuple[type, type]]:
    """The ``register_model`` entries of this process (model type -> (model, processor)).

    Args:
        model_type: only this type's entry (what a worker process needs), if registered.
    """
    if model_type is None:
        return dict(_registered)
    return {model_type: _registered[model_type]} if model_type in _registered else {}


def supported_model_types() -> list[str]:
    """All model types with a registered or built-in implementation."""
    return sorted(set(_BUILTIN) | set(_registered))


def _lookup(model_type: str, index: int) -> type:
    if model_type in _registered:
        return _registered[model_type][index]
    if model_type in _BUILTIN:
        return _import(_BUILTIN[model_type][index])
    raise ValueError(
        f"model type {model_type!r} is not supported; supported: {supported_model_types()} "
        "(add one with mmcore.register_model)"
    )


def get_model_class(model_type: str) -> type:
    """The model class serving ``model_type``; ValueError naming the supported types if none."""
    return _lookup(model_type, 0)


def get_processor_class(model_type: str) -> type:
    """The processor class serving ``model_type``; ValueError naming the supported types if none."""
    return _lookup(model_type, 1)
