"""The FP8 plan of an engine: from ``quantization`` / ``quantize_vision`` and the checkpoint's
``quantization_config``.

Accepted checkpoints (as published on the Hugging Face hub):

- ``quant_method: "compressed-tensors"`` (llm-compressor), format ``float-quantized`` (or the
  older ``naive-quantized``): 8-bit float weights with ``weight_scale`` per channel, per tensor
  or per block, activations dynamic (per token) or static per tensor (``input_scale``);
- ``quant_method: "fp8"`` (transformers' FP8 / DeepSeek style): e4m3 weights with block-wise
  ``weight_scale_inv`` (``weight_block_size``), dynamic activations.

Everything else that declares a ``quant_method`` (AWQ, GPTQ, bitsandbytes, int8 or 4-bit
compressed-tensors, ...) is refused with a ValueError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmcore.engine_args import QUANTIZATION_METHODS
from mmcore.layers.fp8_linear import Fp8CheckpointScheme

_CT_FLOAT_FORMATS = ("float-quantized", "naive-quantized")
_INT4_HINT = (
    "mmcore runs FP8 weights only: load the unquantised (bf16) checkpoint with "
    "quantization='fp8', or an FP8 checkpoint (compressed-tensors FP8 or transformers' fp8)"
)


@dataclass(frozen=True)
class QuantizationConfig:
    """How the loader makes the model's linear layers FP8.

    Attributes:
        method: ``"fp8"`` or ``"compressed-tensors"``.
        checkpoint: the checkpoint's FP8 layout; None quantises the loaded weights online.
        quantize_vision: also quantise the encoder and projector layers online (the language
            model's layers always are; the LM head and embeddings never are).
    """

    method: str
    checkpoint: Fp8CheckpointScheme | None
    quantize_vision: bool = False


def checkpoint_quantization_config(hf_config) -> dict | None:
    """The checkpoint's ``quantization_config`` as a dict (None when it has none)."""
    qc = getattr(hf_config, "quantization_config", None)
    if qc is None:
        text = getattr(hf_config, "text_config", None)
        qc = getattr(text, "quantization_config", None) if text is not None else None
    if qc is None or isinstance(qc, dict):
        return qc
    return qc.to_dict()


def _fail(message: str) -> None:
    raise ValueError(f"unsupported FP8 checkpoint: {message}")


def _ct_group_scheme(group: dict[str, Any]) -> tuple:
    weights, inputs = group.get("weights"), group.get("input_activations")
    if not weights or weights.get("type") != "float" or weights.get("num_bits") != 8:
        kind = f"{weights.get('num_bits')}-bit {weights.get('type')}" if weights else "no"
        _fail(f"compressed-tensors with {kind} weights ({_INT4_HINT})")
    strategy = weights.get("strategy")
    block = None
    if strategy == "block":
        block = tuple(weights.get("block_structure") or ())
        if len(block) != 2:
            _fail(f"block strategy without a 2-D block_structure: {weights.get('block_structure')}")
    elif strategy not in ("channel", "tensor"):
        _fail(f"compressed-tensors weight strategy {strategy!r} (channel, tensor, block run)")
    if not inputs:
        _fail("weight-only FP8 (input_activations null); mmcore runs W8A8 FP8")
    if inputs.get("type") != "float" or inputs.get("num_bits") != 8:
        _fail(f"compressed-tensors activations {inputs.get('num_bits')}-bit {inputs.get('type')}")
    static = not inputs.get("dynamic", False)
    if static and inputs.get("strategy") != "tensor":
        _fail(f"static activation strategy {inputs.get('strategy')!r} (only 'tensor' is static)")
    if group.get("output_activations"):
        _fail("output_activations quantisation")
    return strategy, block, static


def _compressed_tensors_scheme(qc: dict[str, Any]) -> Fp8CheckpointScheme:
    fmt = qc.get("format")
    if fmt not in _CT_FLOAT_FORMATS:
        _fail(f"compressed-tensors format {fmt!r} (FP8 checkpoints are {_CT_FLOAT_FORMATS})")
    if qc.get("kv_cache_scheme"):
        _fail("compressed-tensors kv_cache_scheme (FP8 KV cache scales)")
    groups = list((qc.get("config_groups") or {}).values())
    if not groups:
        _fail("compressed-tensors config without config_groups")
    schemes = {_ct_group_scheme(group) for group in groups}
    if len(schemes) > 1:
        _fail(f"compressed-tensors groups with different FP8 schemes: {sorted(map(str, schemes))}")
    strategy, block, static = schemes.pop()
    return Fp8CheckpointScheme("weight_scale", strategy, block, static)


def _transformers_fp8_scheme(qc: dict[str, Any]) -> Fp8CheckpointScheme:
    if qc.get("activation_scheme", "dynamic") != "dynamic":
        _fail(f"fp8 activation_scheme {qc.get('activation_scheme')!r} (only dynamic)")
    block = qc.get("weight_block_size")
    if not block or len(block) != 2:
        _fail(f"fp8 checkpoint with weight_block_size {block!r} (expected [rows, cols])")
    return Fp8CheckpointScheme("weight_scale_inv", "block", tuple(block), False)


def resolve_quantization(
    hf_config, quantization: str | None, quantize_vision: bool = False
) -> QuantizationConfig | None:
    """The FP8 plan for a checkpoint, or None to run it in the model dtype.

    Args:
        hf_config: the checkpoint's config (its ``quantization_config`` if any).
        quantization: EngineArgs' ``quantization``: None (follow the checkpoint), ``"fp8"``
            (an FP8 checkpoint as it is, any other quantised online) or ``"compressed-tensors"``.
        quantize_vision: also quantise the vision encoder and projector online.

    Raises:
        ValueError: a quantisation method or scheme mmcore does not run (named), or a
            ``quantization`` that contradicts the checkpoint.
    """
    if quantization is not None and quantization not in QUANTIZATION_METHODS:
        raise ValueError(
            f"quantization must be one of {QUANTIZATION_METHODS}, got {quantization!r}"
        )
    qc = checkpoint_quantization_config(hf_config)
    scheme = None
    if qc is not None:
        method = qc.get("quant_method")
        if method == "compressed-tensors":
            scheme = _compressed_tensors_scheme(qc)
        elif method == "fp8":
            scheme = _transformers_fp8_scheme(qc)
        else:
            raise ValueError(
                f"the checkpoint is quantised with quant_method {method!r}, which mmcore does "
                f"not support; {_INT4_HINT}"
            )
        if quantization == "compressed-tensors" and method != "compressed-tensors":
            raise ValueError(f"quantization='compressed-tensors' but the checkpoint is {method!r}")
        return QuantizationConfig(method, scheme, quantize_vision)
    if quantization == "compressed-tensors":
        raise ValueError("quantization='compressed-tensors' needs a compressed-tensors checkpoint")
    if quantization is None:
        if quantize_vision:
            raise ValueError("quantize_vision needs quantization='fp8' or an FP8 checkpoint")
        return None
    return QuantizationConfig("fp8", None, quantize_vision)
