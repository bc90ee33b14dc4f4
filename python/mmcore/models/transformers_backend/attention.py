"""mmcore's paged attention as a transformers attention implementation (``"mmcore"``).

transformers' modeling code calls ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` in
every attention module; registering ``"mmcore"`` through ``AttentionInterface`` makes the HF
language model write its keys/values into mmcore's paged KV cache and attend through
:func:`mmcore.layers.attention.paged_attention`. The step's cache and metadata are not HF
arguments, so :func:`paged_step` publishes them for the duration of one forward.

The batch is one flattened sequence: HF hands ``[1, heads, T, head_dim]`` tensors whose T rows
belong to several requests, which ``AttentionMetadata`` (query starts, block tables, sequence
lengths) separates again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mmcore.layers.attention import AttentionMetadata, paged_attention, write_kv

ATTN_IMPLEMENTATION = "mmcore"
# Attribute set on the language model's attention modules: the index of their KV cache.
LAYER_ATTR = "_mmcore_kv_layer"


@dataclass
class _Step:
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    attn: AttentionMetadata


_current: list[_Step] = []


@contextmanager
def paged_step(kv_caches, attn: AttentionMetadata) -> Iterator[None]:
    """Make ``kv_caches`` and ``attn`` the ones the attention function uses inside the block."""
    _current.append(_Step(kv_caches, attn))
    try:
        yield
    finally:
        _current.pop()


def mmcore_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature over mmcore's paged cache.

    Args:
        module: the HF attention module (tagged with its KV cache index at start-up).
        query: ``[1, Hq, T, D]``; key / value: ``[1, Hkv, T, D]``.
        attention_mask: ignored: causality and request boundaries come from the metadata.
        scaling: softmax scale (default ``D ** -0.5``).
        sliding_window: the layer's window (HF semantics: keys in ``(p - window, p]``).
        softcap: logit soft-capping, refused at start-up (never reaches here non-None).

    Returns:
        ``([1, T, Hq, D], None)`` as HF's implementations return.
    """
    layer = getattr(module, LAYER_ATTR, None)
    if layer is None:  # a vision tower sharing the config: plain SDPA with HF's mask
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if softcap is not None or not _current or query.shape[0] != 1:
        raise RuntimeError(
            "mmcore attention runs only inside a paged step with one flattened sequence "
            "and no soft-capping"
        )
    step = _current[-1]
    q = query[0].transpose(0, 1).contiguous()
    k = key[0].transpose(0, 1).contiguous()
    v = value[0].transpose(0, 1).contiguous()
    kv_cache = step.kv_caches[layer]
    write_kv(k, v, kv_cache, step.attn)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out = paged_attention(q, kv_cache, step.attn, scale, sliding_window or -1)
    return out.unsqueeze(0), None


def register_attention() -> None:
    """Register ``"mmcore"`` with transformers' attention interface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, mmcore_attention)
