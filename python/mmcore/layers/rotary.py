"""Rotary position embeddings, frequencies taken from the HF config's ``rope_parameters``.

The "default" rope is computed here; the static scaled variants (linear, llama3, yarn, ...) reuse
transformers' published frequency functions so the numbers match the checkpoint's training
setup exactly. Position-dependent variants (dynamic NTK, longrope) are rejected.
"""

from __future__ import annotations

import torch
from torch import nn

from mmcore.kernels.reference import rotary_cos_sin_cache
from mmcore.layers.attention import select_op

_POSITION_DEPENDENT = ("dynamic", "longrope")


def rope_parameters(config) -> dict:
    """The config's rope parameters as a dict with at least ``rope_type`` and ``rope_theta``."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_type", params.pop("type", "default"))
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    return params


def inverse_frequencies(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """Return (``inv_freq`` float32 ``[head_dim // 2]``, attention scaling of cos/sin).

    Raises:
        ValueError: for a rope type whose frequencies depend on the sequence length.
    """
    params = rope_parameters(config)
    rope_type = params["rope_type"]
    if rope_type == "default":
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        return 1.0 / (params["rope_theta"] ** exponents), 1.0
    if rope_type in _POSITION_DEPENDENT:
        raise ValueError(f"rope_type {rope_type!r} is not supported (frequencies depend on length)")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"unknown rope_type {rope_type!r}")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


class RotaryEmbedding(nn.Module):
    """Applies rope to queries/keys ``[T, H, D]`` given positions ``[T]`` (NeoX half-split layout).

    cos/sin of every position up to ``max_position_embeddings`` are computed once at start-up
    (float32, then the model dtype, as HF computes them per step); on CUDA one kernel rotates
    the queries and keys of all layers' steps from that cache.
    """

    def __init__(
        self,
        config,
        head_dim: int,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        inv_freq, self.attention_scaling = inverse_frequencies(config, head_dim)
        max_positions = int(getattr(config, "max_position_embeddings", 4096))
        cache = rotary_cos_sin_cache(
            inv_freq.to(device), max_positions, self.attention_scaling, dtype
        )
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated copies of ``query`` ``[T, Hq, D]`` and ``key`` ``[T, Hk, D]``."""
        cache = self._cache_for(query)
        return select_op("rotary_embedding", query)(positions, query, key, cache)

    def _cache_for(self, query: torch.Tensor) -> torch.Tensor:
        """The cos/sin cache, which must have the queries' dtype."""
        cache = self.cos_sin_cache
        if cache.dtype != query.dtype:
            raise ValueError(f"rope cache is {cache.dtype} but the queries are {query.dtype}")
        return cache

    def _section_for(self, positions: torch.Tensor) -> list[int] | None:
        """The M-RoPE section these positions rotate by (None: plain rope)."""
        return None

    def rotate_and_cache(
        self,
        positions: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> torch.Tensor:
        """Rotated copy of ``query``; the rotated ``key`` and the unrotated ``value``
        ``[T, Hk, D]`` go to the caches at ``slot_mapping`` (one CUDA launch; the caches of the
        queries' dtype). M-RoPE layers rotate ``[3, T]`` positions by their section."""
        op = select_op("rotary_embedding_and_cache", query)
        return op(
            positions, query, key, value, self._cache_for(query), key_cache, value_cache,
            slot_mapping, self._section_for(positions),
        )  # fmt: skip


def mrope_section(config) -> list[int]:
    """The config's ``mrope_section`` (3 frequency counts summing to head_dim / 2).

    Raises:
        ValueError: when the config has none.
    """
    params = rope_parameters(config)
    section = params.get("mrope_section")
    if section is None:
        scaling = getattr(config, "rope_scaling", None) or {}
        section = scaling.get("mrope_section")
    if section is None or len(section) != 3:
        raise ValueError(f"the config has no 3-part mrope_section (got {section!r})")
    return [int(v) for v in section]


class MRotaryEmbedding(RotaryEmbedding):
    """Multimodal rope (Qwen2-VL M-RoPE): positions ``[3, T]`` (temporal, height, width);
    frequency section ``i`` of ``mrope_section`` rotates by row ``i``. ``[T]`` positions (all
    rows equal) take the plain rope path, which gives the same result.
    """

    def __init__(
        self,
        config,
        head_dim: int,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(config, head_dim, device=device, dtype=dtype)
        self.mrope_section = mrope_section(config)
        if sum(self.mrope_section) != head_dim // 2:
            raise ValueError(
                f"mrope_section {self.mrope_section} must sum to head_dim / 2 = {head_dim // 2}"
            )

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated copies of ``query`` ``[T, Hq, D]`` and ``key`` ``[T, Hk, D]``."""
        if positions.dim() == 1:
            return super().forward(positions, query, key)
        op = select_op("mrope_rotary_embedding", query)
        return op(positions, query, key, self._cache_for(query), self.mrope_section)

    def _section_for(self, positions: torch.Tensor) -> list[int] | None:
        """``[T]`` positions (all rows equal) take the plain rope; ``[3, T]`` the section."""
        return None if positions.dim() == 1 else self.mrope_section


def rotary_embedding_for(
    config, head_dim: int, *, device: torch.device, dtype: torch.dtype = torch.float32
) -> RotaryEmbedding:
    """The rotary layer a config asks for: :class:`MRotaryEmbedding` when its rope parameters
    carry an ``mrope_section``, else :class:`RotaryEmbedding`."""
    params = rope_parameters(config)
    scaling = getattr(config, "rope_scaling", None) or {}
    if params.get("mrope_section") is not None or scaling.get("mrope_section") is not None:
        return MRotaryEmbedding(config, head_dim, device=device, dtype=dtype)
    return RotaryEmbedding(config, head_dim, device=device, dtype=dtype)
