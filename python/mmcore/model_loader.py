"""Build an mmcore model from a HF checkpoint folder, weights read straight onto the device."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterator

import torch
from torch import nn

from mmcore.engine_args import LOAD_FORMATS
from mmcore.layers.fp8 import check_fp8_device
from mmcore.layers.sharded_weights import LazyWeight
from mmcore.models.interfaces import check_model
from mmcore.models.transformers_backend.loader import (
    load_transformers_model,
    use_transformers_backend,
)
from mmcore.multimodal.registry import get_model_class
from mmcore.quantization import QuantizationConfig, resolve_quantization
from mmcore.quantization.apply import finish_quantization, mark_fp8_checkpoint

DUMMY_STD = 0.02
_INDEX_FILE = "model.safetensors.index.json"


def safetensors_files(model_dir: str) -> list[str]:
    """The checkpoint's safetensors files: the shards of the index if present, else all.

    Raises:
        FileNotFoundError: when the folder holds no safetensors weights (or a shard is missing).
    """
    index_path = os.path.join(model_dir, _INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(model_dir, shard) for shard in shards]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"{_INDEX_FILE} lists missing shards: {missing}")
        return files
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    return files


def iterate_safetensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor | LazyWeight]]:
    """Yield (name, tensor) of every tensor. Tensor parallel: lazy tensors, read only when a
    layer slices them, so a rank reads only its shard of each weight (one rank: plain tensors,
    as every model's ``load_weights`` takes them). KV-cache scales
    (``mmcore.engine.kv_cache.is_kv_scale``) are not model weights and are skipped."""
    from safetensors import safe_open

    from mmcore.distributed.parallel_state import tp_size
    from mmcore.engine.kv_cache import is_kv_scale

    lazy = tp_size() > 1
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                if not is_kv_scale(name):
                    yield name, LazyWeight(f, name) if lazy else f.get_tensor(name)


def _is_norm_scale(name: str, param: torch.Tensor) -> bool:
    return param.dim() == 1 and "norm" in name and name.endswith("weight")


def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights on the parameters' device: normal(0, 0.02), norm scales 1, norm biases 0."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _is_norm_scale(name, param):
                param.fill_(1.0)
            elif param.dim() == 1 and "norm" in name:
                param.zero_()
            else:
                noise = torch.randn(param.shape, generator=generator, device=device)
                param.copy_(noise * DUMMY_STD)


def after_weights_loaded(model: nn.Module) -> None:
    """Call every submodule's optional ``after_weights_loaded()`` (a layout change that needs
    the final weights, e.g. padding for the GPU's GEMMs), once the weights are in place."""
    for module in model.modules():
        hook = getattr(module, "after_weights_loaded", None)
        if callable(hook):
            hook()


def load_model(
    model_dir: str,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    load_format: str = "auto",
    seed: int = 0,
    model_impl: str = "auto",
    quantization: str | None = None,
    quantize_vision: bool = False,
):
    """Build the registered mmcore model for ``model_dir`` and fill its weights.

    Args:
        model_dir: HF checkpoint folder (config.json + safetensors, sharded or not).
        dtype: parameter dtype (checkpoint tensors are cast).
        device: where parameters are created and tensors are read to.
        load_format: ``"auto"``/``"safetensors"`` read the weights; ``"dummy"`` fills random
            ones (seeded by ``seed``) without reading any weight file.
        seed: seed of the dummy weights.
        model_impl: ``auto`` (native if registered, else the Transformers backend),
            ``mmcore`` or ``transformers``.
        quantization: None (as the checkpoint is), ``"fp8"`` or ``"compressed-tensors"``
            (see :func:`mmcore.quantization.resolve_quantization`).
        quantize_vision: with FP8, also quantise the vision encoder and projector.

    Returns:
        ``(model, hf_config)``; the model is in eval mode.

    Raises:
        ValueError: unknown load format or model type, weights that do not fit the model
            (the message names the missing/unexpected tensors), or a quantisation mmcore does
            not run (named).
        TypeError: the registered class does not follow ``mmcore.models.interfaces``.
    """
    from transformers import AutoConfig

    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; choose one of {LOAD_FORMATS}")
    hf_config = AutoConfig.from_pretrained(model_dir)
    device = torch.device(device)
    quant = check_quantization(hf_config, quantization, quantize_vision, model_impl, device)
    if use_transformers_backend(hf_config.model_type, model_impl):
        model = load_transformers_model(
            model_dir, hf_config, dtype=dtype, device=device, load_format=load_format, seed=seed
        )
        check_model(model)
        return model.eval().requires_grad_(False), hf_config
    model_cls = get_model_class(hf_config.model_type)
    model = model_cls(hf_config, dtype=dtype, device=device)
    check_model(model)
    if load_format == "dummy":
        init_dummy_weights(model, seed)
        if quant is not None:  # random weights: an FP8 checkpoint's layout is quantised online
            quant = dataclasses.replace(quant, checkpoint=None)
    else:
        files = safetensors_files(model_dir)
        if quant is not None and quant.checkpoint is not None:
            mark_fp8_checkpoint(model, quant.checkpoint, checkpoint_tensor_names(files))
        model.load_weights(iterate_safetensors(files))
    after_weights_loaded(model)
    if quant is not None:
        finish_quantization(model, quant)
    return model.eval().requires_grad_(False), hf_config


def checkpoint_tensor_names(files: list[str]) -> list[str]:
    """Every tensor name of the safetensors ``files`` (headers only, no tensor is read)."""
    from safetensors import safe_open

    names = []
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            names.extend(f.keys())
    return names


def check_quantization(
    hf_config, quantization: str | None, quantize_vision: bool, model_impl: str, device
) -> QuantizationConfig | None:
    """The FP8 plan of a load, checked against the implementation and the device.

    Raises:
        ValueError: a quantisation mmcore does not run, FP8 with the Transformers backend, or
            FP8 on a GPU below compute capability 8.9.
    """
    quant = resolve_quantization(hf_config, quantization, quantize_vision)
    if quant is None:
        return None
    if use_transformers_backend(hf_config.model_type, model_impl):
        raise ValueError(
            f"FP8 weights ({quant.method}) run on mmcore's native models only; "
            f"{hf_config.model_type} would use the Transformers backend"
        )
    check_fp8_device(device)
    return quant


def describe_quantization(quant: QuantizationConfig | None, load_format: str) -> str | None:
    """A short description of a load's FP8 plan for logs (None: no quantisation)."""
    if quant is None:
        return None
    online = quant.checkpoint is None or load_format == "dummy"
    text = "fp8 (quantised on load)" if online else f"fp8 ({quant.method} checkpoint)"
    return text + (", vision too" if quant.quantize_vision else "")
