"""The paged KV cache's element type, its FP8 scales and the per-layer cache tensors.

``kv_cache_dtype="auto"`` keeps K/V in the model dtype; ``"fp8"`` / ``"fp8_e4m3"`` stores them
as ``torch.float8_e4m3fn`` (half the bytes of bf16, so twice the blocks for the same memory)
with float32 per-layer, per-KV-head scales: the cache holds ``x / scale`` saturated to +-448 and
attention reads ``stored * scale``. Scales come from the checkpoint when it has them (the names
vLLM and llm-compressor write: ``...layers.N.self_attn.k_scale`` / ``v_scale``, or
``...k_proj.output_scale`` / ``v_proj.output_scale``; a scalar applies to every head), else they
are 1.0: unscaled e4m3 keeps 3 mantissa bits over [2^-9, 448], which covers the K/V magnitudes of
common LMs; a value beyond 448 saturates instead of overflowing.
"""

from __future__ import annotations

import re

import torch

from mmcore.engine.kv_groups import KVCacheGroups, single_group

FP8_KV_DTYPE = torch.float8_e4m3fn
_FP8_NAMES = ("fp8", "fp8_e4m3")
# Checkpoint tensors holding K/V quantisation scales: not model weights, read here instead.
_KV_SCALE_NAME = re.compile(
    r"(?:^|\.)layers\.(\d+)\.self_attn\.(?:([kv])_scale|([kv])_proj\.output_scale)$"
)

# Encoder towers have attention layers too; their scales are not the LM's KV cache's.
_ENCODER_PARTS = ("vision", "visual", "audio", "encoder")

KVCache = tuple[torch.Tensor, ...]


def _kv_scale_match(name: str) -> re.Match | None:
    if any(part in name for part in _ENCODER_PARTS):
        return None
    return _KV_SCALE_NAME.search(name)


def is_kv_scale(name: str) -> bool:
    """Whether checkpoint tensor ``name`` is an LM KV-cache scale (skipped by the weight
    loaders, read by :func:`load_kv_scales`)."""
    return _kv_scale_match(name) is not None


def resolve_kv_cache_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """EngineArgs' ``kv_cache_dtype`` -> the cache tensors' dtype.

    Args:
        kv_cache_dtype: ``"auto"``, ``"fp8"`` or ``"fp8_e4m3"``.
        model_dtype: the model's dtype (what ``"auto"`` means).

    Returns:
        ``model_dtype`` or ``torch.float8_e4m3fn``.
    """
    if kv_cache_dtype == "auto":
        return model_dtype
    if kv_cache_dtype in _FP8_NAMES:
        return FP8_KV_DTYPE
    raise ValueError(f"kv_cache_dtype must be auto, fp8 or fp8_e4m3; got {kv_cache_dtype!r}")


def _per_head(value: torch.Tensor, num_kv_heads: int, name: str) -> torch.Tensor:
    value = value.detach().float().flatten().cpu()
    if value.numel() == 1:
        value = value.expand(num_kv_heads)
    if value.numel() != num_kv_heads:
        raise ValueError(
            f"KV scale {name} has {value.numel()} values; expected 1 or {num_kv_heads} (KV heads)"
        )
    if not torch.isfinite(value).all() or (value <= 0).any():
        raise ValueError(f"KV scale {name} must be finite and positive, got {value.tolist()}")
    return value.clone()


def load_kv_scales(
    weight_files: list[str], num_layers: int, num_kv_heads: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (k_scale, v_scale) float32 ``[num_kv_heads]`` CPU tensors.

    Args:
        weight_files: the checkpoint's safetensors files (empty: dummy weights).
        num_layers: decoder layers of the LM.
        num_kv_heads: KV heads per layer.

    Returns:
        One pair per layer: the checkpoint's scales where present, else ones.
    """
    from safetensors import safe_open

    scales = [[torch.ones(num_kv_heads), torch.ones(num_kv_heads)] for _ in range(num_layers)]
    for path in weight_files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                match = _kv_scale_match(name)
                if match is None:
                    continue
                layer = int(match.group(1))
                which = match.group(2) or match.group(3)
                if layer < num_layers:
                    value = _per_head(f.get_tensor(name), num_kv_heads, name)
                    scales[layer][0 if which == "k" else 1] = value
    return [(k, v) for k, v in scales]


def kv_bytes_per_block(
    model, block_size: int, kv_dtype: torch.dtype, num_slots: int | None = None
) -> int:
    """Bytes one KV block id takes, K and V (FP8 scales are per layer, not per block, and
    negligible): across all layers, or across the ``num_slots`` layer slots of KV cache groups
    (:mod:`mmcore.engine.kv_groups`: a block id serves one group's layers)."""
    itemsize = torch.empty((), dtype=kv_dtype).element_size()
    layers = model.num_layers if num_slots is None else num_slots
    return 2 * layers * block_size * model.num_kv_heads * model.head_dim * itemsize


def allocate_kv_caches(
    model,
    num_blocks: int,
    block_size: int,
    kv_dtype: torch.dtype,
    device: torch.device,
    scales: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    zero: bool = True,
    groups: KVCacheGroups | None = None,
) -> list[KVCache]:
    """Per-layer ``(key_cache, value_cache)``, plus ``(k_scale, v_scale)`` when FP8.

    Args:
        model: an mmcore model (``num_layers``, ``num_kv_heads``, ``head_dim``).
        num_blocks, block_size: cache geometry.
        kv_dtype: cache element type.
        device: where the caches live.
        scales: FP8 only: per-layer scales (:func:`load_kv_scales`); ones when omitted.
        zero: zero-fill (else uninitialised, for short-lived profiling caches).
        groups: KV cache groups: layers of different groups with the same slot share one
            K/V tensor (each reads it through its own group's block table); None: one per layer.

    Returns:
        One tuple per layer, ``[num_blocks, block_size, Hkv, D]`` caches first.
    """
    groups = groups or single_group(model.num_layers)
    shape = (num_blocks, block_size, model.num_kv_heads, model.head_dim)
    make = torch.zeros if zero else torch.empty
    slots = [
        (make(shape, dtype=kv_dtype, device=device), make(shape, dtype=kv_dtype, device=device))
        for _ in range(groups.num_slots)
    ]
    caches: list[KVCache] = []
    for layer in range(model.num_layers):
        pair = slots[groups.layer_slot[layer]]
        if kv_dtype == FP8_KV_DTYPE:
            if scales is None:
                k_scale = v_scale = torch.ones(model.num_kv_heads)
            else:
                k_scale, v_scale = scales[layer]
            pair += (
                k_scale.to(device=device, dtype=torch.float32),
                v_scale.to(device=device, dtype=torch.float32),
            )
        caches.append(pair)
    return caches
