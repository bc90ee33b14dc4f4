"""FP8 copies of a checkpoint folder in the layouts published on the hub, for tests and benches.

The language model's linear projections are quantised (``*_proj.weight`` under
``language_model``); the LM head, embeddings, vision tower and projector keep their dtype and
are listed as ignored, as llm-compressor's recipes for LLaVA do. The quantiser here is written
from the formats' definitions, independently of mmcore's loader:

- compressed-tensors (``quant_method: compressed-tensors``, format ``float-quantized``):
  ``weight`` e4m3, ``weight_scale`` float32 ``[N, 1]`` (channel) or ``[1]`` (tensor), optional
  static ``input_scale`` ``[1]``; ``W ~= weight * weight_scale``.
- transformers ``fp8`` (``quant_method: fp8``, ``weight_block_size: [bn, bk]``): ``weight`` e4m3,
  ``weight_scale_inv`` float32 ``[ceil(N/bn), ceil(K/bk)]``; ``W ~= weight * scale`` per block.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def is_lm_projection(name: str) -> bool:
    """Whether checkpoint tensor ``name`` is a linear weight of the language model's layers."""
    return "language_model" in name and ".layers." in name and name.endswith("_proj.weight")


def _to_e4m3(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (weight.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, float32 scale ``[N, 1]``): each output row's max maps to 448."""
    scale = weight.abs().amax(dim=1, keepdim=True).float() / E4M3_MAX
    return _to_e4m3(weight, scale), scale


def quantize_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, float32 scale ``[1]``): the tensor's max maps to 448."""
    scale = weight.abs().amax().float().reshape(1) / E4M3_MAX
    return _to_e4m3(weight, scale), scale


def _block_scale_grid(scale: torch.Tensor, shape, block) -> torch.Tensor:
    bn, bk = block
    grid = scale.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    return grid[: shape[0], : shape[1]]


def quantize_blocks(weight: torch.Tensor, block) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, float32 scales ``[ceil(N/bn), ceil(K/bk)]``), one per ``bn x bk`` block."""
    bn, bk = block
    n, k = weight.shape
    padded = torch.zeros(-(-n // bn) * bn, -(-k // bk) * bk)
    padded[:n, :k] = weight.float().abs()
    amax = padded.reshape(padded.shape[0] // bn, bn, padded.shape[1] // bk, bk).amax(dim=(1, 3))
    scale = amax / E4M3_MAX
    return _to_e4m3(weight, _block_scale_grid(scale, weight.shape, block)), scale


def dequantize_blocks(weight: torch.Tensor, scale: torch.Tensor, block) -> torch.Tensor:
    """Float32 ``weight * scale`` of a block-quantised weight."""
    return weight.float() * _block_scale_grid(scale, weight.shape, block)


def _read(src_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for name in sorted(os.listdir(src_dir)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(src_dir, name)))
    return tensors


def _write(src_dir: str, dst_dir: str, tensors: dict, quantization_config: dict | None) -> str:
    from safetensors.torch import save_file

    os.makedirs(dst_dir, exist_ok=True)
    for name in os.listdir(src_dir):
        if not name.endswith(".safetensors") and not name.endswith(".index.json"):
            shutil.copy(os.path.join(src_dir, name), os.path.join(dst_dir, name))
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{dst_dir}/model.safetensors")
    if quantization_config is not None:
        with open(os.path.join(dst_dir, "config.json")) as f:
            config = json.load(f)
        config["quantization_config"] = quantization_config
        with open(os.path.join(dst_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    return dst_dir


_IGNORE = ["re:.*lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"]


def compressed_tensors_config(strategy: str, static_input: bool) -> dict:
    """A ``quantization_config`` as llm-compressor writes it for FP8 (one group, Linear)."""
    fp8 = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None}
    inputs = {**fp8, "strategy": "tensor" if static_input else "token", "dynamic": not static_input}
    weights = {**fp8, "strategy": strategy, "dynamic": False, "observer": "minmax"}
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": inputs,
                "output_activations": None,
            }
        },
        "ignore": _IGNORE,
        "kv_cache_scheme": None,
    }


def calibrate_input_amax(src_dir: str, texts: list[str]) -> dict[str, float]:
    """Largest input magnitude of each LM linear layer over ``texts`` (HF forward hooks), keyed
    ``"layers.<i>.<block>.<proj>"``: the calibration of static activation scales."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(src_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(src_dir)
    amax: dict[str, float] = {}

    def record(key):
        def hook(module, inputs, output):
            amax[key] = max(amax.get(key, 0.0), inputs[0].abs().max().item())

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in model.model.language_model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    with torch.no_grad():
        for text in texts:
            model(**tokenizer(text, return_tensors="pt"))
    for hook in hooks:
        hook.remove()
    return amax


def write_compressed_tensors_fp8(
    src_dir: str,
    dst_dir: str,
    strategy: str = "channel",
    input_amax: dict[str, float] | None = None,
) -> str:
    """Write ``src_dir`` with FP8 LM projections in compressed-tensors' layout.

    Args:
        src_dir: an unquantised checkpoint folder.
        dst_dir: the folder to write.
        strategy: ``"channel"`` or ``"tensor"`` weight scales.
        input_amax: calibrated input ranges (:func:`calibrate_input_amax`): each projection
            gets a static per-tensor ``input_scale``; None: dynamic per-token activations.

    Returns:
        ``dst_dir``.
    """
    quantize = quantize_channel if strategy == "channel" else quantize_tensor
    out = {}
    for name, tensor in _read(src_dir).items():
        if not is_lm_projection(name):
            out[name] = tensor
            continue
        weight, scale = quantize(tensor)
        prefix = name.removesuffix("weight")
        out[name], out[prefix + "weight_scale"] = weight, scale
        if input_amax is not None:
            key = prefix[prefix.index("layers.") :].rstrip(".")
            out[prefix + "input_scale"] = torch.full((1,), input_amax[key] / E4M3_MAX)
    config = compressed_tensors_config(strategy, input_amax is not None)
    return _write(src_dir, dst_dir, out, config)


def write_transformers_fp8_blockwise(src_dir: str, dst_dir: str, block=(128, 128)) -> str:
    """Write ``src_dir`` with block-wise FP8 LM projections (transformers' ``fp8`` layout)."""
    out = {}
    for name, tensor in _read(src_dir).items():
        if is_lm_projection(name):
            out[name], out[name + "_scale_inv"] = quantize_blocks(tensor, block)
        else:
            out[name] = tensor
    config = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": list(block),
        "modules_to_not_convert": ["lm_head", "vision_tower", "multi_modal_projector"],
    }
    return _write(src_dir, dst_dir, out, config)


def write_block_dequantized(src_dir: str, dst_dir: str, block=(128, 128)) -> str:
    """Write ``src_dir`` with each LM projection replaced by its block-FP8 round trip (float32):
    the weights a block-wise FP8 checkpoint of ``src_dir`` stands for."""
    out = {}
    for name, tensor in _read(src_dir).items():
        out[name] = (
            dequantize_blocks(*quantize_blocks(tensor, block), block)
            if (is_lm_projection(name))
            else tensor
        )
    return _write(src_dir, dst_dir, out, None)
