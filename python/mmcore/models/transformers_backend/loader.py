"""Choosing between a native implementation and the Transformers backend, and loading it."""

from __future__ import annotations

import torch

from mmcore.engine_args import MODEL_IMPLS


def use_transformers_backend(model_type: str, model_impl: str) -> bool:
    """True when ``model_impl`` (``auto`` / ``mmcore`` / ``transformers``) picks the backend.

    ``auto`` takes the native implementation registered for ``model_type`` if there is one.

    Raises:
        ValueError: an unknown ``model_impl``, or ``mmcore`` for an unregistered model type.
    """
    from mmcore.multimodal.registry import supported_model_types

    if model_impl not in MODEL_IMPLS:
        raise ValueError(f"model_impl must be one of {MODEL_IMPLS}, got {model_impl!r}")
    native = model_type in supported_model_types()
    if model_impl == "mmcore" and not native:
        raise ValueError(
            f"model type {model_type!r} has no native mmcore implementation "
            f"(native: {supported_model_types()}); use model_impl='transformers' or 'auto'"
        )
    return model_impl == "transformers" or (model_impl == "auto" and not native)


def build_from_config(cls, hf_config, dtype: torch.dtype, device: torch.device):
    """An HF model of class ``cls`` with HF's random init, created on ``device`` (built on the
    host and moved where transformers refuses the device context without accelerate)."""
    # Auto classes build from a config with from_config, model classes with _from_config.
    build = getattr(cls, "from_config", None) or cls._from_config
    try:
        with torch.device(device):
            return build(hf_config, dtype=dtype, attn_implementation="sdpa")
    except (ImportError, ValueError):
        return build(hf_config, dtype=dtype, attn_implementation="sdpa").to(device)


def load_transformers_model(
    model_dir: str, hf_config, *, dtype: torch.dtype, device: torch.device, load_format: str, seed
):
    """Build the HF model of ``model_dir`` on ``device`` / ``dtype`` behind mmcore's contract.

    Args:
        model_dir: the checkpoint folder.
        hf_config: its config.
        dtype: parameter dtype.
        device: where the model lives.
        load_format: ``dummy`` skips the weight files (random weights seeded by ``seed``).
        seed: seed of dummy weights.

    Returns:
        A :class:`~mmcore.models.transformers_backend.model.TransformersModel`.

    Raises:
        ValueError: the architecture cannot run this way (the reason is named).
    """
    from mmcore.model_loader import init_dummy_weights
    from mmcore.models.transformers_backend.checks import check_supported
    from mmcore.models.transformers_backend.model import TransformersModel, hf_model_class

    check_supported(hf_config)  # before any weight is read
    cls = hf_model_class(hf_config)
    if load_format == "dummy":
        hf_model = build_from_config(cls, hf_config, dtype, device)
        init_dummy_weights(hf_model, seed)
    else:  # read on the host, then moved: a device_map would need accelerate
        hf_model = cls.from_pretrained(
            model_dir, config=hf_config, dtype=dtype, attn_implementation="sdpa"
        ).to(device)
    return TransformersModel(hf_model.eval().requires_grad_(False))


def processor_class(model_type: str, model_impl: str, model_dir: str) -> type:
    """The processor class for ``model_type`` under ``model_impl``.

    Native implementations keep their processor. The Transformers backend uses the generic
    HF-processor class, except for M-RoPE models, whose 3-row positions only a native processor
    lays out (one is required: such a model without one is refused).

    Raises:
        ValueError: an M-RoPE model with no native processor.
    """
    from transformers import AutoConfig

    from mmcore.models.transformers_backend.processor import TransformersMultiModalProcessor
    from mmcore.multimodal.registry import get_processor_class, supported_model_types

    if not use_transformers_backend(model_type, model_impl):
        return get_processor_class(model_type)
    text = AutoConfig.from_pretrained(model_dir).get_text_config()
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    if "mrope_section" not in rope:
        return TransformersMultiModalProcessor
    if model_type in supported_model_types():
        return get_processor_class(model_type)
    raise ValueError(
        f"model type {model_type!r} uses M-RoPE (3-row positions), which mmcore lays out only "
        "with a native processor; it has none"
    )
