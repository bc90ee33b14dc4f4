"""Pure-torch references of the kernels in cpp/kernels/.

They define the ops' semantics: the CPU path of the runner uses them, and every CUDA kernel is
tested against them. Shapes (T = tokens of the step, B = requests, H = heads, D = head dim):

- KV cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``, one tensor for K, one for V.
  FP8 caches (``float8_e4m3fn``) come with float32 per-KV-head scales ``k_scale`` / ``v_scale``
  (``[num_kv_heads]``): a cache holds ``x / scale`` clamped to the e4m3 range (+-448) and rounded
  to nearest; reading multiplies back by the scale.
- ``slot_mapping[t] = block_id * block_size + offset`` for each new token (negative = skip).
- Queries of request b are rows ``query_start_loc[b] : query_start_loc[b + 1]``; they are the
  *last* tokens of its sequence of ``seq_lens[b]`` tokens, whose K/V are all in the cache.
"""

from __future__ import annotations

import torch

FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x [..., Hkv, D] / scale[Hkv]`` as float8_e4m3fn, saturated to +-448 (a plain cast
    would turn out-of-range values into NaN)."""
    scaled = x.float() / scale.float()[:, None]
    return scaled.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


def dequantize_kv(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Float32 K/V ``[..., Hkv, D]`` of a cache slice (FP8 ones times their per-head scale)."""
    if scale is None:
        return x.float()
    return x.float() * scale.float()[:, None]


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Write K/V of the step's tokens ``[T, Hkv, D]`` into the paged caches, in place
    (quantised with ``k_scale`` / ``v_scale`` when the caches are FP8)."""
    block_size = key_cache.shape[1]
    slots = slot_mapping.to(torch.long)
    valid = slots >= 0
    slots = slots[valid]
    blocks, offsets = slots // block_size, slots % block_size
    if key_cache.dtype == torch.float8_e4m3fn:
        key_cache[blocks, offsets] = quantize_fp8(key[valid], k_scale)
        value_cache[blocks, offsets] = quantize_fp8(value[valid], v_scale)
        return
    key_cache[blocks, offsets] = key[valid].to(key_cache.dtype)
    value_cache[blocks, offsets] = value[valid].to(value_cache.dtype)


def _gather_sequence(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = block_table[:num_blocks].to(torch.long)
    return cache[blocks].reshape(-1, *cache.shape[2:])[:seq_len]


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
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of varlen queries ``[T, Hq, D]`` over K/V read through block tables.

    Prefill chunks (many queries whose prefix is already cached) and decodes (one query) mix
    freely in one batch. GQA/MQA: query head h reads KV head ``h // (Hq // Hkv)``.
    ``sliding_window > 0`` lets a query at position p see keys in ``(p - window, p]``.
    ``attend_until`` (int32 ``[T]``, optional) raises query t's upper key bound from its own
    position p to ``max(p, attend_until[t])``: tokens of one image see each other both ways
    (Gemma 3). The window's lower bound still applies. FP8 caches are dequantised with
    ``k_scale`` / ``v_scale`` (float32 ``[Hkv]``).

    Returns:
        ``[T, Hq, D]`` in the query's dtype (computed in float32).
    """
    num_q_heads = query.shape[1]
    num_kv_heads = key_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(query)
    qsl = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for b, seq_len in enumerate(lens):
        q_start, q_end = qsl[b], qsl[b + 1]
        num_q = q_end - q_start
        if num_q == 0:
            continue
        k = dequantize_kv(_gather_sequence(key_cache, block_tables[b], seq_len), k_scale)
        v = dequantize_kv(_gather_sequence(value_cache, block_tables[b], seq_len), v_scale)
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        q = query[q_start:q_end].float()
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        q_pos = torch.arange(seq_len - num_q, seq_len, device=query.device)[:, None]
        k_pos = torch.arange(seq_len, device=query.device)[None, :]
        upper = q_pos
        if attend_until is not None:
            upper = torch.maximum(q_pos, attend_until[q_start:q_end].to(q_pos)[:, None])
        allowed = k_pos <= upper
        if sliding_window > 0:
            allowed &= k_pos > q_pos - sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_start:q_end] = torch.einsum("hqk,khd->qhd", probs, v).to(query.dtype)
    return out


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Non-causal attention within each packed sequence (ViT over many images, no padding).

    Args:
        query, key, value: ``[T, H, D]``, sequences packed back to back.
        cu_seqlens: int32 ``[N + 1]`` prefix sums of the sequence lengths.
        scale: softmax scale.

    Returns:
        ``[T, H, D]`` in the query's dtype (computed in float32).
    """
    out = torch.empty_like(query)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        q, k, v = (t[start:end].float() for t in (query, key, value))
        probs = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) * scale, dim=-1)
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v).to(query.dtype)
    return out


# --------------------------------------------------------------------- fused elementwise ops
# Numerics follow HF transformers' Llama modules op by op (each torch op rounds to the input
# dtype), so the CUDA kernels can match them bit for bit.


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x / sqrt(mean(x^2) + eps))``: normalized in float32, rounded to ``x``'s
    dtype, then scaled by ``weight`` (HF ``LlamaRMSNorm``). ``x``: ``[T, H]``."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add before a decoder layer's norm, fused with it.

    Returns:
        ``(rms_norm(x + residual), x + residual)``; the sum is rounded to ``x``'s dtype first,
        as HF's ``hidden_states = residual + hidden_states`` does.
    """
    summed = residual + x
    return rms_norm(summed, weight, eps), summed


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[:, :I]) * x[:, I:]`` for ``x`` ``[T, 2I]`` (the gate and up halves of a fused
    gate_up projection); silu rounds to the dtype before the product, as in HF."""
    half = x.shape[-1] // 2
    return torch.nn.functional.silu(x[..., :half]) * x[..., half:]


def rotary_cos_sin_cache(
    inv_freq: torch.Tensor, max_positions: int, scaling: float, dtype: torch.dtype
) -> torch.Tensor:
    """``[max_positions, D]``: cos of every position's angles in the first half, sin in the
    second, computed in float32 (times the rope's attention scaling) then cast to ``dtype``."""
    freqs = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)[:, None]
    freqs = freqs * inv_freq.float()[None, :]
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1).to(dtype)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX-style (half-split) rope of queries ``[T, Hq, D]`` and keys ``[T, Hk, D]``.

    Args:
        positions: ``[T]`` ints, rows of ``cos_sin_cache``.
        cos_sin_cache: ``[max_positions, D]`` from :func:`rotary_cos_sin_cache`, in the
            queries' dtype.

    Returns:
        New (query, key): ``x * cos + rotate_half(x) * sin``, each product rounded to the
        dtype before the sum, as HF's ``apply_rotary_pos_emb`` computes it.
    """
    half = query.shape[-1] // 2
    rows = cos_sin_cache[positions.long()]
    cos, sin = rows[:, None, :half], rows[:, None, half:]
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    return rotate(query), rotate(key)


def mrope_columns(mrope_section: list[int], head_dim: int, device=None) -> torch.Tensor:
    """Which position row (0 temporal, 1 height, 2 width) rotates each of the ``head_dim``
    columns of a cos/sin cache row: section ``i`` of the frequencies takes row ``i``, in the
    cos half and the sin half alike (HF ``apply_multimodal_rotary_pos_emb``)."""
    half = head_dim // 2
    if len(mrope_section) != 3 or sum(mrope_section) != half or min(mrope_section) < 0:
        raise ValueError(
            f"mrope_section must be 3 non-negative sizes summing to head_dim / 2 = {half}, "
            f"got {list(mrope_section)}"
        )
    rows = torch.repeat_interleave(torch.arange(3), torch.tensor(list(mrope_section)))
    return torch.cat((rows, rows)).to(device)


def _sectioned_cos_sin(
    positions: torch.Tensor, cos_sin_cache: torch.Tensor, columns: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) ``[T, 1, D]`` for positions ``[R, T]``: cache column ``j`` read at the
    position of row ``columns[j]`` (:func:`mrope_columns`), each half repeated over ``D``."""
    per_row = cos_sin_cache[positions.long()]  # [R, T, D]
    rows = per_row.gather(0, columns.view(1, 1, -1).expand(1, per_row.shape[1], -1))[0]
    half = rows.shape[-1] // 2
    cos, sin = rows[:, None, :half], rows[:, None, half:]
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def mrope_rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    mrope_section: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimodal rope (Qwen2-VL): like :func:`rotary_embedding`, but frequency ``j`` takes the
    angle of the position row its section names.

    Args:
        positions: ``[3, T]`` ints (temporal, height, width rows).
        cos_sin_cache: ``[max_positions, D]`` as for :func:`rotary_embedding`.
        mrope_section: 3 frequency counts summing to ``D / 2``.

    Returns:
        New (query, key).
    """
    head_dim = query.shape[-1]
    columns = mrope_columns(mrope_section, head_dim, positions.device)
    cos, sin = _sectioned_cos_sin(positions, cos_sin_cache, columns)
    half = head_dim // 2

    def rotate(x: torch.Tensor) -> torch.Tensor:
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    return rotate(query), rotate(key)


def rotary_embedding_and_cache(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    mrope_section: list[int] | None = None,
) -> torch.Tensor:
    """:func:`rotary_embedding` (:func:`mrope_rotary_embedding` with ``mrope_section``), then
    :func:`reshape_and_cache` of the rotated keys and the values (caches written in place).

    Returns:
        The rotated queries.
    """
    if mrope_section is None:
        query, key = rotary_embedding(positions, query, key, cos_sin_cache)
    else:
        query, key = mrope_rotary_embedding(positions, query, key, cos_sin_cache, mrope_section)
    reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    return query


def per_token_quant_fp8(x: torch.Tensor, min_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row FP8 (e4m3) quantisation of ``[R, C]``: ``scale = max(amax / 448, min_scale)``
    (float32 ``[R, 1]``), ``x_fp8 = (x / scale)`` rounded to e4m3 (no clamp needed:
    ``|x| / scale <= 448`` up to float32 rounding, which rounds to 448)."""
    fp8 = torch.float8_e4m3fn
    amax = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True, dtype=torch.float32)
    scale = (amax / torch.finfo(fp8).max).clamp_(min=min_scale)
    return (x / scale).to(fp8), scale


def fp8_gemv(
    x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """W8A16 product of a few activation rows: ``x [R, K] @ (weight [N, K] * weight_scale [N,
    1]).T`` in float32, rounded to ``x``'s dtype, then ``+ bias`` (rounded again)."""
    w = weight.float() * weight_scale.float().view(-1, 1)
    out = (x.float() @ w.t()).to(x.dtype)
    return out + bias if bias is not None else out


def vision_rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    sections: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sectioned rope computed in float32 and rounded once (HF's Qwen2-VL vision numerics:
    ``q.float() * cos + rotate_half(q.float()) * sin``, cast back).

    Args:
        positions: ``[R, T]`` ints; frequency section ``i`` rotates by row ``i``.
        query: ``[T, Hq, D]``; key: ``[T, Hk, D]``.
        cos_sin_cache: float32 ``[max_positions, D]``: cos in the first ``D / 2`` columns.
        sections: frequency counts per row, summing to ``D / 2``.

    Returns:
        New (query, key) in their dtype.
    """
    head_dim = query.shape[-1]
    three = (list(sections) + [0, 0])[:3]  # mrope_columns' three rows; the unused ones empty
    columns = mrope_columns(three, head_dim, positions.device)
    cos, sin = _sectioned_cos_sin(positions, cos_sin_cache, columns)
    half = head_dim // 2

    def rotate(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
        return (xf * cos + rotated * sin).to(x.dtype)

    return rotate(query), rotate(key)


def dense_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [R, K] @ weight [N, K].T (+ bias)`` in float32, rounded once to ``x``'s dtype."""
    out = x.float() @ weight.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
