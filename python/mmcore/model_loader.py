"""Build an mmcore model from a HF checkpoint folder, weights read straight onto the device."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

import torch
from torch import nn

from mmcore.engine_args import LOAD_FORMATS
from mmcore.models.interfaces import check_model
from mmcore.models.transformers_backend.loader import (
    load_transformers_model,
    use_transformers_backend,
)
from mmcore.multimodal.registry import get_model_class

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


def iterate_safetensors(
    files: list[str], device: torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) of every tensor, materialized directly on ``device``; KV-cache scales
    (``mmcore.engine.kv_cache.is_kv_scale``) are not model weights and are skipped."""
    from safetensors import safe_open

    from mmcore.engine.kv_cache import is_kv_scale

    for path in files:
        with safe_open(path, framework="pt", device=str(device)) as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                if not is_kv_scale(name):
                    yield name, f.get_tensor(name)


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


def load_model(
    model_dir: str,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    load_format: str = "auto",
    seed: int = 0,
    model_impl: str = "auto",
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

    Returns:
        ``(model, hf_config)``; the model is in eval mode.

    Raises:
        ValueError: unknown load format or model type, or weights that do not fit the model
            (the message names the missing/unexpected tensors).
        TypeError: the registered class does not follow ``mmcore.models.interfaces``.
    """
    from transformers import AutoConfig

    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; choose one of {LOAD_FORMATS}")
    hf_config = AutoConfig.from_pretrained(model_dir)
    device = torch.device(device)
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
    else:
        model.load_weights(iterate_safetensors(safetensors_files(model_dir), device))
    return model.eval().requires_grad_(False), hf_config
