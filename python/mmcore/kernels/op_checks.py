"""Argument checks of the attention custom ops' public wrappers (shapes, FP8 scales): every
problem is a ValueError naming it, raised before anything reaches a kernel."""

from __future__ import annotations

import torch

FP8_KV_DTYPE = torch.float8_e4m3fn


def check_paged(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc):
    """Shapes of a paged-attention call: query [T, Hq, D], caches [blocks, bs, Hkv, D], ..."""
    if query.dim() != 3 or key_cache.dim() != 4 or value_cache.shape != key_cache.shape:
        raise ValueError(
            "paged_attention: expected query [T, Hq, D] and caches [blocks, block_size, Hkv, D], "
            f"got {tuple(query.shape)}, {tuple(key_cache.shape)}, {tuple(value_cache.shape)}"
        )
    if query.shape[2] != key_cache.shape[3]:
        raise ValueError(
            f"paged_attention: query head dim {query.shape[2]} != cache head dim {key_cache.shape[3]}"
        )
    if query.shape[1] % key_cache.shape[2] != 0:
        raise ValueError(
            f"paged_attention: {query.shape[1]} query heads is not a multiple of "
            f"{key_cache.shape[2]} KV heads"
        )
    num_seqs = seq_lens.shape[0]
    if query_start_loc.shape != (num_seqs + 1,) or block_tables.dim() != 2:
        raise ValueError(
            "paged_attention: expected query_start_loc [B + 1] and block_tables [B, max_blocks] "
            f"for B = {num_seqs} sequences"
        )


def check_varlen(query, key, value, cu_seqlens):
    """Shapes of a varlen-attention call: query/key/value [T, H, D], cu_seqlens [N + 1]."""
    if query.dim() != 3 or key.shape != value.shape or key.dim() != 3:
        raise ValueError("varlen_attention: expected query/key/value [T, H, D]")
    if key.shape[0] != query.shape[0] or key.shape[2] != query.shape[2]:
        raise ValueError(
            f"varlen_attention: key {tuple(key.shape)} does not match query {tuple(query.shape)}"
        )
    if key.shape[1] != query.shape[1]:
        raise ValueError("varlen_attention: query, key and value need the same number of heads")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError("varlen_attention: cu_seqlens must be [N + 1]")


def check_scales(key_cache, k_scale, v_scale, name: str):
    """FP8 caches need float32 ``[Hkv]`` scales on their device; others take none."""
    if key_cache.dtype != FP8_KV_DTYPE:
        if k_scale is not None or v_scale is not None:
            raise ValueError(f"{name}: k_scale / v_scale apply to FP8 caches only")
        return
    num_kv_heads = key_cache.shape[2]
    for label, t in (("k_scale", k_scale), ("v_scale", v_scale)):
        if t is None:
            raise ValueError(f"{name}: an FP8 KV cache needs {label}")
        if t.shape != (num_kv_heads,) or t.dtype != torch.float32 or t.device != key_cache.device:
            raise ValueError(
                f"{name}: {label} must be float32 [{num_kv_heads}] on {key_cache.device}, got "
                f"{t.dtype} {tuple(t.shape)} on {t.device}"
            )
