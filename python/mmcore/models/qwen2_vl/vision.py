"""Qwen2-VL / Qwen2.5-VL vision tower over all images and video frames of a step, packed.

Patches of every item arrive concatenated (``[num_patches, C * T * P * P]``, each item's
patches in 2x2 merge-block order as the processor lays them out). Attention is one varlen call
per block: per frame (``cu_seqlens``), or, for Qwen2.5-VL's windowed blocks, per window of
merge units (tokens reordered window by window, and back after the merger)::

    item 0 frame 0 | item 0 frame 1 | item 1 frame 0 | ...     full-attention segments
    w0 | w1 | w2 | w3 | w0' | ...                              windowed segments (2.5)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmcore.distributed.parallel_state import encoder_tp_disabled
from mmcore.layers.activations import get_activation, get_gated_activation
from mmcore.layers.attention import select_op, varlen_attention
from mmcore.layers.gemm_alignment import pad_gated_mlp
from mmcore.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    RowParallelLinear,
    StackedQKVParallelLinear,
)
from mmcore.layers.norm import RMSNorm

Grid = tuple[int, int, int]  # (t, h, w) in patches, before the spatial merge


def _is_qwen2_5(config) -> bool:
    return hasattr(config, "fullatt_block_indexes")


def _head_dim(config) -> int:
    width = config.hidden_size if _is_qwen2_5(config) else config.embed_dim
    return width // config.num_heads


def patch_positions(grids: list[Grid], merge: int) -> np.ndarray:
    """(row, column) of every patch, ``[num_patches, 2]``, in merge-block order, per frame."""
    out = []
    for t, h, w in grids:
        rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
        cols = np.broadcast_to(np.arange(w)[None, :], (h, w))
        shape = (h // merge, merge, w // merge, merge)
        rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([rows, cols], axis=-1), (t, 1)))
    return np.concatenate(out)


def frame_cu_seqlens(grids: list[Grid]) -> np.ndarray:
    """Prefix sums of per-frame patch counts (every frame attends within itself)."""
    lengths = [h * w for t, h, w in grids for _ in range(t)]
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def window_layout(grids: list[Grid], merge: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL windows of ``window x window`` merge units over each frame.

    Returns:
        (order of merge units, window by window; prefix sums of window lengths in patches).
    """
    order, bounds, base = [], [0], 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        nh, nw = -(-gh // window), -(-gw // window)
        units = np.arange(t * gh * gw).reshape(t, gh, gw)
        for frame in range(t):
            for wi in range(nh):
                for wj in range(nw):
                    block = units[
                        frame, wi * window : (wi + 1) * window, wj * window : (wj + 1) * window
                    ]
                    if block.size:
                        order.append(block.reshape(-1) + base)
                        bounds.append(bounds[-1] + block.size * merge * merge)
        base += t * gh * gw
    return np.concatenate(order), np.asarray(bounds, dtype=np.int32)


class VisionRotary(nn.Module):
    """2-D rope of the vision blocks: half the frequencies rotate by row, half by column."""

    def __init__(self, config, head_dim: int, device: torch.device):
        super().__init__()
        params = getattr(config, "rope_parameters", None) or {}
        theta = float(params.get("rope_theta", 10000.0))
        spatial = head_dim // 2
        exponents = torch.arange(0, spatial, 2, dtype=torch.float, device=device) / spatial
        self.register_buffer("inv_freq", 1.0 / theta**exponents, persistent=False)
        # Frequency counts rotated by the patch row, then by the patch column.
        self.sections = [spatial // 2, spatial // 2]

    def cos_sin_cache(self, size: int) -> torch.Tensor:
        """float32 ``[size, head_dim]``: cos then sin of positions ``0..size-1``; each half is
        the rows' frequencies, then the columns' (the same ones), as HF lays them out."""
        index = torch.arange(size, dtype=torch.float, device=self.inv_freq.device)
        angles = index[:, None] * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return torch.cat((angles.cos(), angles.sin()), dim=-1)


class VisionAttention(nn.Module):
    """Bidirectional attention within each packed segment (frame or window), 2-D rope on q/k
    (tensor parallel: heads split over the ranks, one all-reduce after ``proj``)."""

    def __init__(self, dim: int, num_heads: int, *, dtype, device, disable_tp: bool):
        super().__init__()
        self.head_dim = dim // num_heads
        kw = dict(bias=True, dtype=dtype, device=device, disable_tp=disable_tp)
        self.qkv = StackedQKVParallelLinear(dim, num_heads, self.head_dim, **kw)
        self.num_heads = self.qkv.num_local_heads
        self.proj = RowParallelLinear(dim, dim, **kw)

    def forward(self, x, cu_seqlens, rope):
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, self.head_dim).unbind(1)
        positions, cache, sections = rope
        q, k = select_op("vision_rotary_embedding", q)(positions, q, k, cache, sections)
        out = varlen_attention(q, k, v.contiguous(), cu_seqlens, self.head_dim**-0.5)
        return self.proj(out.reshape(n, -1))


class VisionMLP(nn.Module):
    """Qwen2-VL: ``fc2(act(fc1(x)))``; Qwen2.5-VL: gated ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config, dim: int, *, dtype, device, disable_tp: bool):
        super().__init__()
        self.gated = _is_qwen2_5(config)
        kw = dict(bias=True, dtype=dtype, device=device, disable_tp=disable_tp)
        if self.gated:
            inner = config.intermediate_size
            self.gate_up_proj = MergedColumnParallelLinear(
                dim, {"gate_proj": inner, "up_proj": inner}, **kw
            )
            self.act_and_mul = get_gated_activation(config.hidden_act)
            self.down_proj = RowParallelLinear(inner, dim, **kw)
        else:
            inner = int(dim * config.mlp_ratio)
            self.fc1 = ColumnParallelLinear(dim, inner, **kw)
            self.act = get_activation(config.hidden_act)
            self.fc2 = RowParallelLinear(inner, dim, **kw)

    def after_weights_loaded(self) -> None:
        """On CUDA, pad the gated inner width (Qwen2.5-VL: 3,420) for Hopper's fast GEMMs."""
        if self.gated and self.gate_up_proj.weight.is_cuda:
            pad_gated_mlp(self.gate_up_proj, self.down_proj)

    def forward(self, x):
        if self.gated:
            return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))
        return self.fc2(self.act(self.fc1(x)))


def _norm(config, dim: int, dtype, device) -> nn.Module:
    if _is_qwen2_5(config):
        return RMSNorm(dim, 1e-6, dtype=dtype, device=device)
    return nn.LayerNorm(dim, eps=1e-6, dtype=dtype, device=device)


class VisionBlock(nn.Module):
    """Pre-norm transformer block (LayerNorm for Qwen2-VL, RMSNorm for Qwen2.5-VL)."""

    def __init__(self, config, dim: int, *, dtype, device, disable_tp: bool):
        super().__init__()
        kw = dict(dtype=dtype, device=device, disable_tp=disable_tp)
        self.norm1 = _norm(config, dim, dtype, device)
        self.norm2 = _norm(config, dim, dtype, device)
        self.attn = VisionAttention(dim, config.num_heads, **kw)
        self.mlp = VisionMLP(config, dim, **kw)

    def forward(self, x, cu_seqlens, rope):
        x = x + self.attn(self.norm1(x), cu_seqlens, rope)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Norm, then each 2x2 block of patches (concatenated) through a 2-layer GELU MLP
    (column- then row-parallel)."""

    def __init__(self, config, dim: int, out_dim: int, *, dtype, device, disable_tp: bool):
        super().__init__()
        self.merged = dim * config.spatial_merge_size**2
        self.ln_q = _norm(config, dim, dtype, device)
        kw = dict(bias=True, dtype=dtype, device=device, disable_tp=disable_tp)
        self.mlp = nn.Sequential(
            ColumnParallelLinear(self.merged, self.merged, **kw),
            nn.GELU(),
            RowParallelLinear(self.merged, out_dim, **kw),
        )

    def forward(self, x):
        return self.mlp(self.ln_q(x).view(-1, self.merged))


class Qwen2VisionTower(nn.Module):
    """The vision tower of Qwen2-VL or Qwen2.5-VL (chosen by the vision config), HF names.

    Args:
        config: the HF vision config (``Qwen2VLVisionConfig`` or ``Qwen2_5_VLVisionConfig``).
        dtype, device: of the parameters.
    """

    def __init__(self, config, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.config = config
        self.windowed = _is_qwen2_5(config)
        dim = config.hidden_size if self.windowed else config.embed_dim
        out_dim = config.out_hidden_size if self.windowed else config.hidden_size
        self.merge = int(config.spatial_merge_size)
        self.temporal = int(config.temporal_patch_size)
        self.patch_dim = (
            config.in_channels * config.temporal_patch_size * config.patch_size * config.patch_size
        )
        # Conv3d with stride == kernel over one patch each: a GEMM (weights reshaped at load).
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Linear(
            self.patch_dim, dim, bias=False, dtype=dtype, device=device
        )
        self.rotary = VisionRotary(config, _head_dim(config), device)
        # mm_encoder_tp_mode="data": every rank keeps the whole tower and encodes a share.
        kw = dict(dtype=dtype, device=device, disable_tp=encoder_tp_disabled())
        self.blocks = nn.ModuleList(VisionBlock(config, dim, **kw) for _ in range(config.depth))
        self.merger = PatchMerger(config, dim, out_dim, **kw)
        if self.windowed:
            self.window = config.window_size // self.merge // config.patch_size
            self.full_blocks = set(config.fullatt_block_indexes)
        self.output_size = out_dim

    def num_embeds(self, grid: Grid) -> int:
        t, h, w = grid
        return t * h * w // self.merge**2

    def forward(self, pixel_values: torch.Tensor, grids: list[Grid]) -> torch.Tensor:
        """Merged embeddings ``[num_patches / merge^2, out_dim]`` of all items, in item order.

        Args:
            pixel_values: ``[num_patches, C * T * P * P]`` of all items, concatenated.
            grids: each item's (t, h, w) patch grid.
        """
        device = pixel_values.device
        dtype = self.patch_embed.proj.weight.dtype
        x = self.patch_embed.proj(pixel_values.to(dtype))
        positions = torch.from_numpy(patch_positions(grids, self.merge)).to(device)
        cache = self.rotary.cos_sin_cache(max(max(h, w) for _, h, w in grids))
        full = torch.from_numpy(frame_cu_seqlens(grids)).to(device)
        unit = self.merge**2
        if self.windowed:
            order_np, bounds = window_layout(grids, self.merge, self.window)
            order = torch.from_numpy(order_np).to(device)
            windows = torch.from_numpy(bounds).to(device)

            def by_window(t: torch.Tensor) -> torch.Tensor:
                return t.view(-1, unit, t.shape[-1])[order].reshape(t.shape)

            x, positions = by_window(x), by_window(positions)
        rope = (positions.t().contiguous(), cache, self.rotary.sections)  # rows [2, N]
        for index, block in enumerate(self.blocks):
            windowed = self.windowed and index not in self.full_blocks
            x = block(x, windows if windowed else full, rope)
        merged = self.merger(x)
        if self.windowed:
            merged = merged[torch.argsort(order)]
        return merged
