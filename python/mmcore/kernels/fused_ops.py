"""Torch custom ops over the fused elementwise CUDA kernels, the references as the CPU path.

``mmcore::rms_norm``, ``mmcore::fused_add_rms_norm``, ``mmcore::silu_and_mul`` and
``mmcore::rotary_embedding`` (and its M-RoPE variant ``mmcore::mrope_rotary_embedding``) are
functional (new outputs, nothing mutated); ``mmcore::rotary_embedding_and_cache`` (rope and the
KV-cache write of the rotated keys and the values, one launch) mutates the caches. All carry
fake implementations, so they trace under ``torch.compile`` and replay in CUDA graphs. They
give the results of :mod:`mmcore.kernels.reference` (HF Llama numerics op by op) bit for bit,
except that the RMSNorm mean is summed in another order. CUDA tensors whose operands share one
dtype (float32, float16 or bfloat16) go to ``mmcore._kernels``; CPU tensors, mixed dtypes (say
a float32 norm weight) and a missing module go to the reference. :mod:`mmcore.kernels.ops`
re-exports the public wrappers, which is where ``select_op`` finds them.
"""

from __future__ import annotations

import torch

from mmcore.kernels import reference
from mmcore.kernels.cuda_module import DTYPE_CODES, kernels_module, stream_handle

_DTYPE_CODES = DTYPE_CODES


def _kernels():
    """The CUDA module when it is built with these kernels, else None."""
    module = kernels_module()
    return module if hasattr(module, "rms_norm") else None


def _use_kernel(*tensors: torch.Tensor) -> bool:
    first = tensors[0]
    return (
        first.is_cuda
        and first.dtype in _DTYPE_CODES
        and all(t.dtype == first.dtype and t.device == first.device for t in tensors[1:])
        and _kernels() is not None
    )


_stream = stream_handle


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[N, last]`` with a contiguous last dim (a view where the layout allows)."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# ------------------------------------------------------------------------------- custom ops


@torch.library.custom_op("mmcore::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not _use_kernel(x, weight):
        return reference.rms_norm(x, weight, eps)
    rows, w = as_rows(x), weight.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):
        _kernels().rms_norm(
            x=rows.data_ptr(), x_stride=rows.stride(0), weight=w.data_ptr(), out=out.data_ptr(),
            out_stride=out.stride(0), num_tokens=rows.shape[0], hidden=rows.shape[1], eps=eps,
            dtype=_DTYPE_CODES[x.dtype], stream=_stream(x),
        )  # fmt: skip
    return out.view(x.shape)


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype))


@torch.library.custom_op("mmcore::fused_add_rms_norm", mutates_args=())
def _fused_add_rms_norm_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if not _use_kernel(x, residual, weight):
        return reference.fused_add_rms_norm(x, residual, weight, eps)
    rows, res, w = as_rows(x), as_rows(residual), weight.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    summed = torch.empty_like(out)
    with torch.cuda.device(x.device):
        _kernels().fused_add_rms_norm(
            x=rows.data_ptr(), x_stride=rows.stride(0), residual=res.data_ptr(),
            residual_stride=res.stride(0), weight=w.data_ptr(), out=out.data_ptr(),
            out_stride=out.stride(0), summed=summed.data_ptr(), summed_stride=summed.stride(0),
            num_tokens=rows.shape[0], hidden=rows.shape[1], eps=eps,
            dtype=_DTYPE_CODES[x.dtype], stream=_stream(x),
        )  # fmt: skip
    return out.view(x.shape), summed.view(x.shape)


@_fused_add_rms_norm_op.register_fake
def _(x, residual, weight, eps):
    summed = x.new_empty(x.shape, dtype=torch.promote_types(residual.dtype, x.dtype))
    return summed.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, summed.dtype)), summed


@torch.library.custom_op("mmcore::silu_and_mul", mutates_args=())
def _silu_and_mul_op(x: torch.Tensor) -> torch.Tensor:
    if not _use_kernel(x):
        return reference.silu_and_mul(x)
    rows = as_rows(x)
    half = rows.shape[1] // 2
    out = torch.empty((rows.shape[0], half), dtype=x.dtype, device=x.device)
    with torch.cuda.device(x.device):
        _kernels().silu_and_mul(
            x=rows.data_ptr(), x_stride=rows.stride(0), out=out.data_ptr(),
            out_stride=out.stride(0), num_tokens=rows.shape[0], intermediate=half,
            dtype=_DTYPE_CODES[x.dtype], stream=_stream(x),
        )  # fmt: skip
    return out.view(*x.shape[:-1], half)


@_silu_and_mul_op.register_fake
def _(x):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def _rope_positions(positions: torch.Tensor, device: torch.device, mrope_section):
    """Positions as the rope kernels read them (int32 / int64, contiguous, on ``device``) and
    the M-RoPE keyword arguments (none for plain 1-D positions)."""
    pos = positions.to(device=device)
    if pos.dtype not in (torch.int32, torch.int64):
        pos = pos.long()
    pos = pos.contiguous()
    mrope = (
        {}
        if mrope_section is None
        else {"mrope_section": list(mrope_section), "positions_row_stride": pos.stride(0)}
    )
    return pos, mrope


def _rotary_kernel(positions, query, key, cos_sin_cache, mrope_section=None, float_math=False):
    """The rotary kernel into new q/k tensors; ``mrope_section`` set: 3-row M-RoPE positions;
    ``float_math``: a float32 cache, float32 arithmetic rounded once."""
    q, k, cache = (_last_dim_contiguous(t) for t in (query, key, cos_sin_cache))
    pos, mrope = _rope_positions(positions, q.device, mrope_section)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    with torch.cuda.device(q.device):
        _kernels().rotary_embedding(
            positions=pos.data_ptr(), positions_int64=pos.dtype == torch.int64,
            query=q.data_ptr(), q_strides=q.stride()[:2], key=k.data_ptr(),
            k_strides=k.stride()[:2], query_out=q_out.data_ptr(), qo_strides=q_out.stride()[:2],
            key_out=k_out.data_ptr(), ko_strides=k_out.stride()[:2],
            cos_sin_cache=cache.data_ptr(), cache_stride=cache.stride(0),
            max_positions=cache.shape[0], num_tokens=q.shape[0], num_q_heads=q.shape[1],
            num_kv_heads=k.shape[1], head_dim=q.shape[2], dtype=_DTYPE_CODES[q.dtype],
            stream=_stream(q), float_math=float_math, **mrope,
        )  # fmt: skip
    return q_out, k_out


@torch.library.custom_op("mmcore::rotary_embedding", mutates_args=())
def _rotary_embedding_op(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if not _use_kernel(query, key, cos_sin_cache):
        return reference.rotary_embedding(positions, query, key, cos_sin_cache)
    return _rotary_kernel(positions, query, key, cos_sin_cache)


@_rotary_embedding_op.register_fake
def _(positions, query, key, cos_sin_cache):
    return (
        query.new_empty(query.shape, dtype=torch.promote_types(query.dtype, cos_sin_cache.dtype)),
        key.new_empty(key.shape, dtype=torch.promote_types(key.dtype, cos_sin_cache.dtype)),
    )


@torch.library.custom_op("mmcore::mrope_rotary_embedding", mutates_args=())
def _mrope_rotary_embedding_op(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    mrope_section: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    if not _use_kernel(query, key, cos_sin_cache):
        return reference.mrope_rotary_embedding(positions, query, key, cos_sin_cache, mrope_section)
    return _rotary_kernel(positions, query, key, cos_sin_cache, mrope_section)


@_mrope_rotary_embedding_op.register_fake
def _(positions, query, key, cos_sin_cache, mrope_section):
    return (
        query.new_empty(query.shape, dtype=torch.promote_types(query.dtype, cos_sin_cache.dtype)),
        key.new_empty(key.shape, dtype=torch.promote_types(key.dtype, cos_sin_cache.dtype)),
    )


def rope_cache_kernel_applies(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
) -> bool:
    """Whether ``mmcore::rotary_embedding_and_cache`` runs the fused CUDA kernel for these
    tensors: all on one CUDA device in one of float32 / float16 / bfloat16 (an FP8 cache does
    not qualify), caches laid out ``[num_blocks, block_size, Hkv, D]`` with a contiguous last dim
    (the layout the kernel checks), and a built module that has the kernel."""
    module = _kernels()
    return (
        _use_kernel(query, key, value, cos_sin_cache, key_cache, value_cache)
        and _block_token_head_layout(key_cache)
        and _block_token_head_layout(value_cache)
        and hasattr(module, "rotary_embedding_and_cache")
    )


def _block_token_head_layout(cache: torch.Tensor) -> bool:
    """``[blocks, block_size, heads, D]`` rows that do not overlap, head dim contiguous."""
    if cache.dim() != 4 or cache.stride(-1) != 1:
        return False
    _, block_size, heads, dim = cache.shape
    s_block, s_token, s_head, _ = cache.stride()
    return s_head >= dim and s_token >= heads * s_head and s_block >= block_size * s_token


@torch.library.custom_op(
    "mmcore::rotary_embedding_and_cache", mutates_args=("key_cache", "value_cache")
)
def _rotary_embedding_and_cache_op(
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
    if not rope_cache_kernel_applies(query, key, value, cos_sin_cache, key_cache, value_cache):
        return reference.rotary_embedding_and_cache(
            positions, query, key, value, cos_sin_cache, key_cache, value_cache, slot_mapping,
            mrope_section,
        )  # fmt: skip
    q, k, v, cache = (_last_dim_contiguous(t) for t in (query, key, value, cos_sin_cache))
    pos, mrope = _rope_positions(positions, q.device, mrope_section)
    slots = slot_mapping.to(device=q.device, dtype=torch.int64).contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    with torch.cuda.device(q.device):
        _kernels().rotary_embedding_and_cache(
            positions=pos.data_ptr(), positions_int64=pos.dtype == torch.int64,
            query=q.data_ptr(), q_strides=q.stride()[:2], key=k.data_ptr(),
            k_strides=k.stride()[:2], value=v.data_ptr(), v_strides=v.stride()[:2],
            query_out=q_out.data_ptr(), qo_strides=q_out.stride()[:2],
            cos_sin_cache=cache.data_ptr(), cache_stride=cache.stride(0),
            max_positions=cache.shape[0], key_cache=key_cache.data_ptr(),
            kc_strides=key_cache.stride()[:3], value_cache=value_cache.data_ptr(),
            vc_strides=value_cache.stride()[:3], slot_mapping=slots.data_ptr(),
            block_size=key_cache.shape[1], num_blocks=key_cache.shape[0],
            num_tokens=q.shape[0], num_q_heads=q.shape[1], num_kv_heads=k.shape[1],
            head_dim=q.shape[2], dtype=_DTYPE_CODES[q.dtype], stream=_stream(q), **mrope,
        )  # fmt: skip
    return q_out


@_rotary_embedding_and_cache_op.register_fake
def _(
    positions,
    query,
    key,
    value,
    cos_sin_cache,
    key_cache,
    value_cache,
    slot_mapping,
    mrope_section=None,
):
    return query.new_empty(query.shape, dtype=torch.promote_types(query.dtype, cos_sin_cache.dtype))


# -------------------------------------------------------------------------- public wrappers


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_norm(name: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    if not x.is_floating_point() or not weight.is_floating_point():
        raise ValueError(
            f"{name}: x and weight must be floating point, got {x.dtype}, {weight.dtype}"
        )
    if x.dim() < 1 or weight.dim() != 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"{name}: expected x [..., H] and weight [H], got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if weight.shape[0] == 0:
        raise ValueError(f"{name}: hidden size must be positive")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the last dim (HF ``LlamaRMSNorm`` numerics).

    Args:
        x: ``[..., H]`` activations; rows may be strided.
        weight: ``[H]`` scale.
        eps: added to the mean square.

    Returns:
        New ``[..., H]`` tensor: ``weight * round(x / sqrt(mean(x^2) + eps))``.
    """
    _check_norm("rms_norm", x, weight)
    return torch.ops.mmcore.rms_norm(x, weight, float(eps))


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add before a decoder layer's norm, fused with it, in one launch.

    Args:
        x: ``[..., H]`` the previous sublayer's output.
        residual: same shape as ``x``.
        weight: ``[H]`` norm scale.
        eps: added to the mean square.

    Returns:
        New tensors ``(rms_norm(residual + x), residual + x)``; neither input is modified.
    """
    _check_norm("fused_add_rms_norm", x, weight)
    if residual.shape != x.shape or not residual.is_floating_point():
        raise ValueError(
            f"fused_add_rms_norm: residual {tuple(residual.shape)} ({residual.dtype}) must be a "
            f"floating tensor of x's shape {tuple(x.shape)}"
        )
    return torch.ops.mmcore.fused_add_rms_norm(x, residual, weight, float(eps))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a fused gate_up projection (HF ``LlamaMLP`` numerics).

    Args:
        x: ``[..., 2I]``, gate in the first half of the last dim, up in the second.

    Returns:
        New ``[..., I]`` tensor.
    """
    if not x.is_floating_point() or x.dim() < 1:
        raise ValueError(f"silu_and_mul: expected a floating tensor [..., 2I], got {x.dtype}")
    if x.shape[-1] == 0 or x.shape[-1] % 2 != 0:
        raise ValueError(f"silu_and_mul: last dim must be even and positive, got {x.shape[-1]}")
    return torch.ops.mmcore.silu_and_mul(x)


def _check_rope_args(name, positions, query, key, cos_sin_cache, mrope_section):
    """Shapes and dtypes of a rope op's inputs; returns the M-RoPE section as ints (None for
    plain rope, whose positions are ``[T]``; M-RoPE's are ``[3, T]``)."""
    if query.dim() != 3 or key.dim() != 3:
        raise ValueError(
            f"{name}: expected query [T, Hq, D] and key [T, Hk, D], got "
            f"{tuple(query.shape)} and {tuple(key.shape)}"
        )
    num_tokens, _, head_dim = query.shape
    if key.shape[0] != num_tokens or key.shape[2] != head_dim:
        raise ValueError(
            f"{name}: key {tuple(key.shape)} does not match query {tuple(query.shape)}"
        )
    if head_dim == 0 or head_dim % 2 != 0:
        raise ValueError(f"{name}: head dim must be even and positive, got {head_dim}")
    want = (num_tokens,) if mrope_section is None else (3, num_tokens)
    if positions.shape != want or not _is_integer(positions):
        shape = "[T]" if mrope_section is None else "[3, T]"
        raise ValueError(
            f"{name}: positions must be {shape} = {list(want)} integers, got "
            f"{tuple(positions.shape)} {positions.dtype}"
        )
    section = None if mrope_section is None else [int(v) for v in mrope_section]
    if section is not None and (
        len(section) != 3 or min(section) < 0 or sum(section) != head_dim // 2
    ):
        raise ValueError(
            f"{name}: mrope_section must be 3 sizes summing to {head_dim // 2}, got {section}"
        )
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != head_dim:
        raise ValueError(
            f"{name}: cos_sin_cache must be [max_positions, {head_dim}], got "
            f"{tuple(cos_sin_cache.shape)}"
        )
    if cos_sin_cache.shape[0] == 0:
        raise ValueError(f"{name}: cos_sin_cache has no positions")
    return section


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NeoX-style rope of queries and keys from a cos/sin cache (HF ``apply_rotary_pos_emb``).

    Args:
        positions: ``[T]`` ints (int64 or int32 stay as they are), rows of ``cos_sin_cache``;
            each must be in ``[0, max_positions)``.
        query: ``[T, Hq, D]``; key: ``[T, Hk, D]``. Strided views (say of a fused qkv
            projection) are read in place as long as the last dim is contiguous.
        cos_sin_cache: ``[max_positions, D]`` from ``reference.rotary_cos_sin_cache``: cos in
            the first ``D / 2`` columns, sin in the rest.

    Returns:
        New contiguous ``(query, key)`` after the rotation.
    """
    _check_rope_args("rotary_embedding", positions, query, key, cos_sin_cache, None)
    return torch.ops.mmcore.rotary_embedding(positions, query, key, cos_sin_cache)


def mrope_rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    mrope_section: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimodal rope (Qwen2-VL's M-RoPE) of queries and keys from a cos/sin cache.

    Args:
        positions: ``[3, T]`` ints: temporal, height and width position of each token.
        query: ``[T, Hq, D]``; key: ``[T, Hk, D]`` (last dim contiguous).
        cos_sin_cache: ``[max_positions, D]`` as for :func:`rotary_embedding`.
        mrope_section: 3 frequency counts summing to ``D / 2``: frequency ``j`` rotates by the
            position of row 0 for the first ``mrope_section[0]`` frequencies, row 1 for the
            next ``mrope_section[1]``, row 2 for the rest.

    Returns:
        New contiguous ``(query, key)`` after the rotation.
    """
    section = _check_rope_args(
        "mrope_rotary_embedding", positions, query, key, cos_sin_cache, mrope_section
    )
    return torch.ops.mmcore.mrope_rotary_embedding(positions, query, key, cos_sin_cache, section)


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
    """Rope of queries and keys, and the KV-cache write of the rotated keys and the values.

    The result equals :func:`rotary_embedding` (:func:`mrope_rotary_embedding` with
    ``mrope_section``) followed by ``reshape_and_cache`` of the rotated keys and ``value``; on
    CUDA (see :func:`rope_cache_kernel_applies`) it is one launch, the rotated keys going
    straight to the cache.

    Args:
        positions: ``[T]`` ints, or ``[3, T]`` with ``mrope_section``.
        query: ``[T, Hq, D]``; key, value: ``[T, Hkv, D]`` (last dim contiguous).
        cos_sin_cache: ``[max_positions, D]`` as for :func:`rotary_embedding`.
        key_cache, value_cache: ``[num_blocks, block_size, Hkv, D]``, written in place; not
            FP8 (FP8 caches take the two ops, which quantise with the layer's scales).
        slot_mapping: ``[T]`` ints, ``block_id * block_size + offset`` (negative = skip).
        mrope_section: 3 frequency counts summing to ``D / 2`` (M-RoPE), or None.

    Returns:
        New contiguous rotated queries.
    """
    name = "rotary_embedding_and_cache"
    if value.shape != key.shape:
        raise ValueError(
            f"{name}: expected query [T, Hq, D] and key/value [T, Hkv, D], got "
            f"{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}"
        )
    section = _check_rope_args(name, positions, query, key, cos_sin_cache, mrope_section)
    num_tokens = query.shape[0]
    if (
        key_cache.dim() != 4
        or key_cache.shape[2:] != key.shape[1:]
        or value_cache.shape != key_cache.shape
    ):
        raise ValueError(
            f"{name}: K/V rows {tuple(key.shape[1:])} do not fit caches {tuple(key_cache.shape)} "
            f"and {tuple(value_cache.shape)}"
        )
    if key_cache.dtype == torch.float8_e4m3fn or value_cache.dtype == torch.float8_e4m3fn:
        raise ValueError(f"{name}: FP8 caches take rotary_embedding and reshape_and_cache (scales)")
    if slot_mapping.shape != (num_tokens,) or not _is_integer(slot_mapping):
        raise ValueError(f"{name}: slot_mapping must be [T] = [{num_tokens}] integers")
    return torch.ops.mmcore.rotary_embedding_and_cache(
        positions, query, key, value, cos_sin_cache, key_cache, value_cache, slot_mapping, section
    )
