"""Torch custom ops over the CUDA kernels, with the pure-torch references as the CPU path.

``mmcore::reshape_and_cache`` (mutates the caches), ``mmcore::paged_attention`` and
``mmcore::varlen_attention`` are registered with ``torch.library`` and carry fake (meta)
implementations, so they trace under ``torch.compile`` and replay in CUDA graphs. CUDA tensors go
to ``mmcore._kernels`` (raw device pointers, strides and the current stream); CPU tensors,
float32 CUDA inputs (a deliberate debugging path) and CUDA inputs without a built module go to
:mod:`mmcore.kernels.reference`. float16/bfloat16 CUDA inputs the kernels cannot take (a head
dim outside ``ATTENTION_HEAD_DIMS``) raise ValueError instead of silently running the slow
reference.

KV caches may be FP8 (``torch.float8_e4m3fn``) with float32 per-KV-head ``k_scale`` /
``v_scale`` (``[Hkv]``): the stored value times the scale is the real one.

The fused elementwise ops (``rms_norm``, ``fused_add_rms_norm``, ``silu_and_mul``,
``rotary_embedding``, ``rotary_embedding_and_cache``) live in :mod:`mmcore.kernels.fused_ops`
and are re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from mmcore.kernels import reference
from mmcore.kernels.cuda_module import (
    DTYPE_CODES,
    FP8_E4M3_CODE,
    kernels_module,
    rows_aligned,
    stream_handle,
)
from mmcore.kernels.fused_ops import (  # noqa: F401  (re-exported: select_op finds ops.<name>)
    fused_add_rms_norm,
    mrope_rotary_embedding,
    rms_norm,
    rope_cache_kernel_applies,
    rotary_embedding,
    rotary_embedding_and_cache,
    silu_and_mul,
)
from mmcore.kernels.op_checks import FP8_KV_DTYPE, check_paged, check_scales, check_varlen
from mmcore.kernels.vision_rope import vision_rotary_embedding  # noqa: F401  (re-exported)

_DTYPE_CODES = DTYPE_CODES


_kernels = kernels_module


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


#: Mixed steps (decodes next to prefill chunks) launch the decode variant for the decodes;
#: ``MMCORE_MIXED_STEP_SPLIT=0`` runs them through prefill tiles with the rest (one launch).
MIXED_STEP_SPLIT = os.environ.get("MMCORE_MIXED_STEP_SPLIT", "1") != "0"

#: Fewest 64-key tiles a KV split (flash-decoding) gets: short contexts split finely at batch 1,
#: where a decode step's attention is latency, not bandwidth (4: the coarser split of before).
SPLIT_MIN_KEY_TILES = 1

#: Counters of the split-KV merge in the decode kernel (one per row-tile CTA and KV head).
SPLIT_COUNTER_CAPACITY = 1 << 16
_split_counters_by_device: dict[int, torch.Tensor] = {}


def _split_counters(device: torch.device) -> torch.Tensor | None:
    """This device's zeroed split-KV counters (the kernel leaves them zeroed after each launch).

    Created on the first eager call: zeros made inside a CUDA-graph capture would be zeroed by
    that graph only. Until then (a first call inside a capture) None: the combine kernel runs.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    counters = _split_counters_by_device.get(index)
    if counters is None and not torch.cuda.is_current_stream_capturing():
        counters = torch.zeros(SPLIT_COUNTER_CAPACITY, dtype=torch.int32, device=device)
        _split_counters_by_device[index] = counters
    return counters


#: Head dims and dtypes the attention kernels are compiled for (72: SigLIP, 256: Gemma; 16 and
#: 32: small vision towers such as the demo model's and the tiny test checkpoints').
ATTENTION_HEAD_DIMS = (16, 32, 64, 72, 80, 128, 256)
ATTENTION_DTYPES = (torch.float16, torch.bfloat16)


def _use_kernel(t: torch.Tensor) -> bool:
    return t.is_cuda and _kernels() is not None


def attention_kernel_supports(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether the CUDA attention kernels take these inputs (else the ops use the reference).

    Args:
        query: ``[T, Hq, D]`` queries.
        key: the key cache or packed keys; the query's dtype (or, for a paged cache, FP8).

    Returns:
        True for CUDA tensors of float16/bfloat16 with D in ``ATTENTION_HEAD_DIMS`` when
        ``mmcore._kernels`` is built.
    """
    return (
        _use_kernel(query)
        and query.dtype in ATTENTION_DTYPES
        and key.dtype in (query.dtype, FP8_KV_DTYPE)
        and query.shape[-1] in ATTENTION_HEAD_DIMS
    )


def _kernel_or_reference(name: str, query: torch.Tensor, *kv: torch.Tensor) -> bool:
    """True when the CUDA kernel runs; False for the reference (CPU, float32 CUDA inputs, no
    module). Raises ValueError for float16/bfloat16 CUDA inputs the kernels cannot take."""
    if not _use_kernel(query) or query.dtype not in ATTENTION_DTYPES:
        return False
    if query.shape[-1] not in ATTENTION_HEAD_DIMS:
        raise ValueError(
            f"{name}: no CUDA attention kernel for head dim {query.shape[-1]} (built for "
            f"{', '.join(map(str, ATTENTION_HEAD_DIMS))}); run the model in float32 for the "
            "torch reference"
        )
    allowed = (query.dtype, FP8_KV_DTYPE) if name == "paged_attention" else (query.dtype,)
    for t in kv:
        if t.dtype not in allowed:
            raise ValueError(
                f"{name}: K/V dtype {t.dtype} does not match the query's {query.dtype}"
            )
    return True


def _dtype_code(t: torch.Tensor, name: str) -> int:
    if t.dtype == FP8_KV_DTYPE:
        return FP8_E4M3_CODE
    if t.dtype not in _DTYPE_CODES:
        raise ValueError(f"{name}: unsupported dtype {t.dtype}")
    return _DTYPE_CODES[t.dtype]


def _int32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32).contiguous()


_stream = stream_handle


@torch.library.custom_op("mmcore::reshape_and_cache", mutates_args=("key_cache", "value_cache"))
def _reshape_and_cache_op(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    if not _use_kernel(key):
        reference.reshape_and_cache(
            key, value, key_cache, value_cache, slot_mapping, k_scale, v_scale
        )
        return
    for name, t in (
        ("key", key),
        ("value", value),
        ("key_cache", key_cache),
        ("value_cache", value_cache),
    ):
        if t.stride(-1) != 1:
            raise ValueError(f"reshape_and_cache: {name} needs a contiguous last dim")
    slots = slot_mapping.to(torch.int64).contiguous()
    with torch.cuda.device(key.device):
        _kernels().reshape_and_cache(
            key=key.data_ptr(),
            key_strides=key.stride()[:2],
            value=value.data_ptr(),
            value_strides=value.stride()[:2],
            key_cache=key_cache.data_ptr(),
            kc_strides=key_cache.stride()[:3],
            value_cache=value_cache.data_ptr(),
            vc_strides=value_cache.stride()[:3],
            slot_mapping=slots.data_ptr(),
            num_tokens=key.shape[0],
            num_kv_heads=key.shape[1],
            head_dim=key.shape[2],
            block_size=key_cache.shape[1],
            num_blocks=key_cache.shape[0],
            src_dtype=_dtype_code(key, "reshape_and_cache"),
            cache_dtype=_dtype_code(key_cache, "reshape_and_cache"),
            stream=_stream(key),
            k_scale=0 if k_scale is None else k_scale.contiguous().data_ptr(),
            v_scale=0 if v_scale is None else v_scale.contiguous().data_ptr(),
        )


@_reshape_and_cache_op.register_fake
def _(key, value, key_cache, value_cache, slot_mapping, k_scale=None, v_scale=None) -> None:
    return None


@torch.library.custom_op("mmcore::paged_attention", mutates_args=())
def _paged_attention_op(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int,
    max_query_len: int,
    max_seq_len: int,
    attend_until: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    min_query_len: int = 0,
) -> torch.Tensor:
    if not _kernel_or_reference("paged_attention", query, key_cache, value_cache):
        return reference.paged_attention(
            query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale,
            sliding_window, attend_until, k_scale=k_scale, v_scale=v_scale,
        )  # fmt: skip
    if key_cache.dtype != value_cache.dtype:
        raise ValueError("paged_attention: key and value caches differ in dtype")
    if key_cache.stride(-1) != 1 or value_cache.stride(-1) != 1:
        raise ValueError("paged_attention: caches need a contiguous head dim")
    q = rows_aligned(query)
    num_tokens, num_q_heads, head_dim = q.shape
    num_seqs = seq_lens.shape[0]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    tile_offsets = torch.empty(num_seqs + 2, dtype=torch.int32, device=q.device)
    tables = _int32(block_tables)
    lens = _int32(seq_lens)
    starts = _int32(query_start_loc)
    until = None if attend_until is None else _int32(attend_until)
    kernels = _kernels()
    # Mixed steps: decode rows through the decode variant, longer runs through prefill tiles.
    min_query_len = min(min_query_len, max_query_len) if MIXED_STEP_SPLIT else max_query_len
    decode_splits, prefill_splits = kernels.paged_launch_plan(
        num_seqs, num_tokens, num_q_heads, key_cache.shape[2], min_query_len, max_query_len,
        max_seq_len, _num_sms(q.device.index or 0), head_dim, SPLIT_MIN_KEY_TILES,
    )  # fmt: skip
    num_splits = max(decode_splits, prefill_splits)
    counters = _split_counters(q.device)
    partial_out = partial_lse = None
    if num_splits > 1:
        partial_out = torch.empty(
            (num_splits, num_tokens, num_q_heads, head_dim), dtype=torch.float32, device=q.device
        )
        partial_lse = torch.empty(
            (num_splits, num_tokens, num_q_heads), dtype=torch.float32, device=q.device
        )
    with torch.cuda.device(q.device):
        kernels.paged_attention(
            q=q.data_ptr(),
            q_strides=q.stride()[:2],
            key_cache=key_cache.data_ptr(),
            k_strides=key_cache.stride()[:3],
            value_cache=value_cache.data_ptr(),
            v_strides=value_cache.stride()[:3],
            block_size=key_cache.shape[1],
            block_tables=tables.data_ptr(),
            block_table_stride=tables.stride(0),
            seq_lens=lens.data_ptr(),
            query_start_loc=starts.data_ptr(),
            tile_offsets=tile_offsets.data_ptr(),
            out=out.data_ptr(),
            out_strides=out.stride()[:2],
            num_seqs=num_seqs,
            num_tokens=num_tokens,
            num_q_heads=num_q_heads,
            num_kv_heads=key_cache.shape[2],
            head_dim=head_dim,
            dtype=_dtype_code(q, "paged_attention"),
            scale=scale,
            sliding_window=sliding_window,
            decode_splits=decode_splits,
            prefill_splits=prefill_splits,
            partial_out=0 if partial_out is None else partial_out.data_ptr(),
            partial_lse=0 if partial_lse is None else partial_lse.data_ptr(),
            stream=_stream(q),
            attend_until=0 if until is None else until.data_ptr(),
            kv_dtype=_dtype_code(key_cache, "paged_attention"),
            k_scale=0 if k_scale is None else k_scale.contiguous().data_ptr(),
            v_scale=0 if v_scale is None else v_scale.contiguous().data_ptr(),
            split_counters=0 if counters is None else counters.data_ptr(),
            split_counter_capacity=0 if counters is None else counters.numel(),
            num_cache_blocks=key_cache.shape[0],
        )
    return out


@_paged_attention_op.register_fake
def _(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale,
      sliding_window, max_query_len, max_seq_len, attend_until=None, k_scale=None,
      v_scale=None, min_query_len=0):  # fmt: skip
    return query.new_empty(query.shape)


@torch.library.custom_op("mmcore::varlen_attention", mutates_args=())
def _varlen_attention_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    if not _kernel_or_reference("varlen_attention", query, key, value):
        return reference.varlen_attention(query, key, value, cu_seqlens, scale)
    q, k, v = (rows_aligned(t) for t in (query, key, value))
    num_tokens, num_q_heads, head_dim = q.shape
    num_seqs = cu_seqlens.shape[0] - 1
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    tile_offsets = torch.empty(num_seqs + 2, dtype=torch.int32, device=q.device)
    starts = _int32(cu_seqlens)
    with torch.cuda.device(q.device):
        _kernels().varlen_attention(
            q=q.data_ptr(),
            q_strides=q.stride()[:2],
            k=k.data_ptr(),
            k_strides=k.stride()[:2],
            v=v.data_ptr(),
            v_strides=v.stride()[:2],
            cu_seqlens=starts.data_ptr(),
            tile_offsets=tile_offsets.data_ptr(),
            out=out.data_ptr(),
            out_strides=out.stride()[:2],
            num_seqs=num_seqs,
            num_tokens=num_tokens,
            num_q_heads=num_q_heads,
            num_kv_heads=k.shape[1],
            head_dim=head_dim,
            dtype=_dtype_code(q, "varlen_attention"),
            scale=scale,
            causal=False,
            stream=_stream(q),
        )
    return out


@_varlen_attention_op.register_fake
def _(query, key, value, cu_seqlens, scale):
    return query.new_empty(query.shape)


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Write K/V ``[T, Hkv, D]`` into the paged caches at ``slot_mapping`` (negative = skip).

    Args:
        key, value: the step's new K/V rows.
        key_cache, value_cache: ``[num_blocks, block_size, Hkv, D]``, written in place.
        slot_mapping: ``[T]`` ints, ``block_id * block_size + offset``.
        k_scale, v_scale: float32 ``[Hkv]`` for FP8 caches (stored = x / scale, saturated to
            the e4m3 range); None otherwise.
    """
    if key.dim() != 3 or value.shape != key.shape or key_cache.dim() != 4:
        raise ValueError("reshape_and_cache: expected key/value [T, Hkv, D] and 4-D caches")
    if key.shape[1:] != key_cache.shape[2:] or value_cache.shape != key_cache.shape:
        raise ValueError(
            f"reshape_and_cache: K/V rows {tuple(key.shape[1:])} do not fit caches "
            f"{tuple(key_cache.shape)}"
        )
    if slot_mapping.shape != (key.shape[0],):
        raise ValueError("reshape_and_cache: slot_mapping must have one slot per token")
    check_scales(key_cache, k_scale, v_scale, "reshape_and_cache")
    torch.ops.mmcore.reshape_and_cache(
        key, value, key_cache, value_cache, slot_mapping, k_scale, v_scale
    )


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    sliding_window: int = -1,
    attend_until: torch.Tensor | None = None,
    *,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    min_query_len: int | None = None,
) -> torch.Tensor:
    """Causal attention of varlen queries over paged K/V (semantics of the reference).

    Args:
        query: ``[T, Hq, D]``; rows of request b are ``query_start_loc[b]:query_start_loc[b+1]``.
        key_cache, value_cache: ``[num_blocks, block_size, Hkv, D]``.
        block_tables: ``[B, max_blocks]`` ints.
        seq_lens: ``[B]`` total tokens per request (the queries are its last tokens).
        query_start_loc: ``[B + 1]`` ints.
        scale: softmax scale.
        sliding_window: ``> 0`` limits each query to the last ``sliding_window`` keys.
        attend_until: int32 ``[T]`` or None (plain causal): query t sees keys up to
            ``max(own position, attend_until[t])`` (bidirectional image spans). A fixed
            tensor is capturable in CUDA graphs; None is the no-mask case.
        max_query_len, max_seq_len: upper bounds of the queries per request and of
            ``seq_lens`` (they pick the kernel variant and the KV split; an understated
            ``max_query_len`` gives wrong results). Computed from the tensors (a device sync)
            when omitted; pass them under CUDA graph capture.
        k_scale, v_scale: float32 ``[Hkv]`` dequantisation scales of FP8 caches.
        min_query_len: a lower bound of the queries per request. With ``max_query_len`` it
            splits a mixed step: requests of at most 16 query rows (queries x GQA group) run
            through the decode variant, the others through prefill tiles, two launches. 0
            when omitted with ``max_query_len`` given (a decode launch that may find nothing),
            else computed with it.

    Returns:
        ``[T, Hq, D]`` in the query's dtype.
    """
    check_paged(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc)
    check_scales(key_cache, k_scale, v_scale, "paged_attention")
    if attend_until is not None and attend_until.shape != (query.shape[0],):
        raise ValueError(
            f"paged_attention: attend_until must be [T] = [{query.shape[0]}], got "
            f"{tuple(attend_until.shape)}"
        )
    if max_query_len is None:
        counts = query_start_loc[1:] - query_start_loc[:-1]
        max_query_len = int(counts.max()) if counts.numel() else 0
        if min_query_len is None:
            min_query_len = int(counts.min()) if counts.numel() else 0
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max()) if seq_lens.numel() else 0
    return torch.ops.mmcore.paged_attention(
        query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, float(scale),
        int(sliding_window), int(max_query_len), int(max_seq_len), attend_until, k_scale, v_scale,
        int(min_query_len or 0),
    )  # fmt: skip


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Non-causal attention within each packed sequence (ViT over many images, no padding).

    Args:
        query, key, value: ``[T, H, D]``.
        cu_seqlens: ``[N + 1]`` prefix sums of the sequence lengths.
        scale: softmax scale.

    Returns:
        ``[T, H, D]`` in the query's dtype.
    """
    check_varlen(query, key, value, cu_seqlens)
    return torch.ops.mmcore.varlen_attention(query, key, value, cu_seqlens, float(scale))


def hopper_attention_selected(head_dim: int, kv_fp8: bool = False) -> bool:
    """Whether prefill and packed (ViT) attention of this head dim run the Hopper kernel (wgmma,
    sm90a) on the current CUDA device: built for 90a with CUTLASS, a compute-capability 9.0
    device, head dim 64, 72, 80, 128 or 256, not turned off (``MMCORE_SM90_ATTENTION=0`` or
    :func:`hopper_attention`). ``kv_fp8``: paged prefill over an FP8 (e4m3) cache, which it
    reads at head dims 64 and 128 only. Split-KV launches keep the sm80 kernel."""
    kernels = _kernels()
    return bool(
        kernels is not None and kernels.sm90_attention_selected(int(head_dim), kv_fp8=bool(kv_fp8))
    )


@contextlib.contextmanager
def hopper_attention(enabled: bool):
    """Runs the block with the Hopper attention kernel on or off (process-wide; A/B checks),
    then restores the setting it found."""
    kernels = _kernels()
    if kernels is None:
        yield
        return
    before = kernels.sm90_attention_enabled()
    kernels.set_sm90_attention_enabled(bool(enabled))
    try:
        yield
    finally:
        kernels.set_sm90_attention_enabled(before)
