"""Attention metadata of one step and the single dispatch to CUDA kernels or torch references.

Every attention layer of every model goes through the functions below; they pick
``mmcore.kernels.ops.<op>`` for CUDA tensors when that module imports, else the batched CPU
path ``mmcore.kernels.cpu.<op>`` where it has the op, else ``mmcore.kernels.reference.<op>``
(same signatures).

Layout of one step (B requests, T new tokens in total)::

    tokens:          | req 0 new tokens | req 1 new tokens | ... |     T rows
    query_start_loc: 0                  q1                 q2 ... T   int32[B + 1]
    seq_lens[b]:     cached + new tokens of request b               int32[B]
    slot_mapping[t]: block_id * block_size + offset of token t      int64[T] (negative = skip)
    attend_until[t]: last key position token t may see (optional)  int32[T]

A layer's KV cache is ``(key_cache, value_cache)`` or, for an FP8 cache
(``kv_cache_dtype="fp8"``), ``(key_cache, value_cache, k_scale, v_scale)`` with float32
per-KV-head scales; the functions below pass the scales on.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType

import torch

from mmcore.kernels import cpu, reference
from mmcore.kernels.cpu_plan import AttentionPlan, plan_attention


@dataclass
class AttentionMetadata:
    """Where the step's tokens sit in the paged KV cache (tensors on the model's device).

    Attributes:
        slot_mapping: int64 ``[T]`` cache slot of each new token.
        block_tables: int32 ``[B, max_blocks]`` KV blocks of each request.
        seq_lens: int32 ``[B]`` tokens of each request after this step (cached + new).
        query_start_loc: int32 ``[B + 1]`` prefix sums of the new tokens per request.
        max_seq_len: the largest entry of ``seq_lens``.
        max_query_len: the most new tokens of one request (known on the host, so the CUDA
            kernel needs no device sync to pick its variant).
        min_query_len: the fewest new tokens of one request (0: unknown); with
            ``max_query_len`` it tells the CUDA kernel whether a step mixes decode rows and
            prefill runs (one launch of each variant).
        attend_until: int32 ``[T]`` or None (plain causal). Query t sees keys up to
            ``max(own position, attend_until[t])``: tokens of one image attend to each other
            both ways (models whose ``bidirectional_mm_spans`` is set, e.g. Gemma 3).
        cross: encoder-decoder models only: where the step's queries find their requests'
            cross-attention K/V (:class:`CrossAttentionMetadata`).
        groups: hybrid KV cache only (:mod:`mmcore.engine.kv_groups`): the metadata of each
            KV cache group (``groups[0]`` is this one), whose slot mapping and block tables
            differ; None with one group.
        layer_group: with ``groups``: the group of each decoder layer.
    """

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    max_seq_len: int
    max_query_len: int
    min_query_len: int = 0
    attend_until: torch.Tensor | None = None
    cross: CrossAttentionMetadata | None = None
    groups: list[AttentionMetadata] | None = None
    layer_group: tuple[int, ...] | None = None
    # The CPU attention path's per-step plans by (block size, window): built by the first layer.
    _cpu_plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def cpu_attention_plan(self, block_size: int, sliding_window: int) -> AttentionPlan:
        """The CPU paged attention's index tensors and masks of this step
        (:func:`mmcore.kernels.cpu_plan.plan_attention`), built once and shared by the layers.

        Args:
            block_size: tokens per KV cache block.
            sliding_window: the layer's window (-1: none).

        Returns:
            The plan for these arguments.
        """
        plan = self._cpu_plans.get((block_size, sliding_window))
        if plan is None:
            plan = plan_attention(
                self.block_tables,
                self.seq_lens,
                self.query_start_loc,
                block_size,
                sliding_window,
                self.attend_until,
            )
            self._cpu_plans[(block_size, sliding_window)] = plan
        return plan

    def for_layer(self, layer: int) -> AttentionMetadata:
        """The metadata decoder layer ``layer`` reads: its KV cache group's (this one without
        groups). Models with sliding-window layers call it per layer."""
        if self.groups is None:
            return self
        return self.groups[self.layer_group[layer]]

    @property
    def num_requests(self) -> int:
        return int(self.seq_lens.shape[0])


@dataclass
class CrossAttentionMetadata:
    """Where each query token of the step finds its request's cross-attention K/V.

    Attributes:
        block_tables: int32 ``[T, max_cross_blocks]`` the cross block table of each token's
            request (one row per token: each token is its own one-query sequence).
        seq_lens: int32 ``[T]`` encoder positions of each token's request.
        query_start_loc: int32 ``[T + 1]`` ``0, 1, ..., T``.
        max_seq_len: the largest entry of ``seq_lens``.
        fill_states: ``[N, d_model]`` encoder outputs of the requests whose cross K/V this step
            writes, concatenated (None: none).
        fill_slot_mapping: int64 ``[N]`` cache slot of each row of ``fill_states``.
    """

    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    max_seq_len: int
    fill_states: torch.Tensor | None = None
    fill_slot_mapping: torch.Tensor | None = None

    def as_attention(self) -> AttentionMetadata:
        """The metadata :func:`paged_attention` reads (the slot mapping is unused there)."""
        return AttentionMetadata(
            slot_mapping=self.fill_slot_mapping,
            block_tables=self.block_tables,
            seq_lens=self.seq_lens,
            query_start_loc=self.query_start_loc,
            max_seq_len=self.max_seq_len,
            max_query_len=1,
            min_query_len=1,
        )


@cache
def _cuda_ops() -> ModuleType | None:
    try:
        return importlib.import_module("mmcore.kernels.ops")
    except ImportError:
        return None


def select_op(name: str, tensor: torch.Tensor):
    """Return the implementation of kernel op ``name`` for tensors like ``tensor``.

    Args:
        name: op name, e.g. ``"paged_attention"``.
        tensor: an input of the op; its device decides CUDA kernel vs torch reference.

    Returns:
        ``mmcore.kernels.ops.<name>`` for CUDA tensors when importable, else the CPU path's
        version, else the reference.
    """
    ops = _cuda_ops() if tensor.is_cuda else None
    if ops is not None and hasattr(ops, name):
        return getattr(ops, name)
    if not tensor.is_cuda and hasattr(cpu, name):
        return getattr(cpu, name)
    return getattr(reference, name)


def _scales(kv_cache: tuple[torch.Tensor, ...]) -> dict:
    """``k_scale`` / ``v_scale`` keyword arguments of an FP8 layer cache (none otherwise)."""
    return {"k_scale": kv_cache[2], "v_scale": kv_cache[3]} if len(kv_cache) == 4 else {}


def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: tuple[torch.Tensor, ...],
    attn: AttentionMetadata,
) -> None:
    """Store the step's keys/values ``[T, Hkv, D]`` at ``attn.slot_mapping`` in the layer's cache
    (quantised to FP8 with the layer's scales when the cache is FP8)."""
    key_cache, value_cache = kv_cache[:2]
    select_op("reshape_and_cache", key)(
        key, value, key_cache, value_cache, attn.slot_mapping, **_scales(kv_cache)
    )


def rotate_and_write_kv(
    rotary,
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: tuple[torch.Tensor, ...],
    attn: AttentionMetadata,
) -> torch.Tensor:
    """Rope of the step's queries and keys, and the cache write of the rotated keys and the
    values (:func:`write_kv`).

    One fused CUDA launch when the cache is not FP8 and the kernel takes the tensors
    (``mmcore.kernels.ops.rope_cache_kernel_applies``); else ``rotary`` then :func:`write_kv`,
    with the same result.

    Args:
        rotary: a :class:`mmcore.layers.rotary.RotaryEmbedding` (or ``MRotaryEmbedding``).
        positions: ``[T]`` (or ``[3, T]`` for M-RoPE) positions of the step's tokens.
        query: ``[T, Hq, D]``; key, value: ``[T, Hkv, D]``.

    Returns:
        The rotated queries ``[T, Hq, D]``.
    """
    key_cache, value_cache = kv_cache[:2]
    ops = _cuda_ops()  # rope_cache_kernel_applies is False for CPU tensors
    # FP8 caches quantise with the layer's scales: only the two-op path does that.
    if (
        len(kv_cache) == 2
        and ops is not None
        and ops.rope_cache_kernel_applies(
            query, key, value, rotary.cos_sin_cache, key_cache, value_cache
        )
    ):
        return rotary.rotate_and_cache(
            positions, query, key, value, key_cache, value_cache, attn.slot_mapping
        )
    query, key = rotary(positions, query, key)
    write_kv(key, value, kv_cache, attn)
    return query


def paged_attention(
    query: torch.Tensor,
    kv_cache: tuple[torch.Tensor, ...],
    attn: AttentionMetadata,
    scale: float,
    sliding_window: int = -1,
) -> torch.Tensor:
    """Causal attention of the step's queries ``[T, Hq, D]`` over each request's cached K/V.

    ``attn.attend_until`` (when set) opens the causal bound inside image spans; see
    :class:`AttentionMetadata`.

    Returns:
        ``[T, Hq, D]`` in the query's dtype.
    """
    key_cache, value_cache = kv_cache[:2]
    op = select_op("paged_attention", query)
    args = (query, key_cache, value_cache, attn.block_tables, attn.seq_lens, attn.query_start_loc)
    extra = _scales(kv_cache)
    if attn.attend_until is not None:
        extra["attend_until"] = attn.attend_until
    if op is getattr(_cuda_ops(), "paged_attention", None):
        # Host-side bounds: the CUDA op would otherwise read them back from the device.
        return op(
            *args,
            scale,
            sliding_window,
            max_query_len=attn.max_query_len,
            min_query_len=attn.min_query_len,
            max_seq_len=attn.max_seq_len,
            **extra,
        )
    if op is cpu.paged_attention:  # the step's index tensors and masks, shared by its layers
        extra["plan"] = attn.cpu_attention_plan(key_cache.shape[1], sliding_window)
    return op(*args, scale, sliding_window, **extra)


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Bidirectional attention within packed sequences (vision encoders), ``[T, H, D]`` each.

    Args:
        cu_seqlens: int32 ``[N + 1]`` prefix sums of the packed sequence lengths.

    Returns:
        ``[T, H, D]`` in the query's dtype.
    """
    return select_op("varlen_attention", query)(query, key, value, cu_seqlens, scale)
