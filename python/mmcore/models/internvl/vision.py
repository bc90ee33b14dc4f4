"""InternViT (HF ``InternVLVisionModel``) over packed 448 px tiles, tensor parallel by heads.

Every tile is one sequence of ``1 + (S/P)^2`` tokens (class token first); all tiles of a step
are packed into one ``[tiles * tokens, hidden]`` batch and attend within their tile (varlen
attention). A block is pre-norm with layer scale::

    x = x + lambda_1 * attn(norm_before(x))       (q/k RMS-normed over all heads if use_qk_norm)
    x = x + lambda_2 * mlp(norm_after(x))

Norms are LayerNorm or RMSNorm (``norm_type``). Only the layers up to the feature layer run.
"""

from __future__ import annotations

import torch
from torch import nn

from mmcore.distributed.communication import all_reduce
from mmcore.distributed.parallel_state import encoder_tp_disabled, tp_rank, tp_size
from mmcore.layers.activations import get_activation
from mmcore.layers.attention import varlen_attention
from mmcore.layers.linear import ColumnParallelLinear, RowParallelLinear, divide
from mmcore.layers.norm import RMSNorm
from mmcore.layers.sharded_weights import WeightTarget


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (value, value)


def resolve_feature_layer(feature_layer, num_layers: int) -> tuple[int, bool]:
    """HF ``vision_feature_layer`` -> (layers to run, apply the final ``layernorm``).

    ``-1`` is HF's ``last_hidden_state`` (after the tower's final norm, an identity when
    ``use_mean_pooling``); any other index reads ``hidden_states[i]`` (0: the embeddings).

    Raises:
        ValueError: a list (InternVL takes one layer) or an index out of range.
    """
    if not isinstance(feature_layer, int) or isinstance(feature_layer, bool):
        raise ValueError(f"InternVL takes one vision_feature_layer, got {feature_layer!r}")
    if feature_layer == -1:
        return num_layers, True
    if not -(num_layers + 1) <= feature_layer <= num_layers:
        raise ValueError(
            f"vision_feature_layer {feature_layer} is out of range for {num_layers} layers"
        )
    return feature_layer % (num_layers + 1), False


class ShardedRMSNorm(nn.Module):
    """RMSNorm over a width split across the ranks (q/k norm over all heads): each rank keeps
    its columns of the weight; the sum of squares is all-reduced (one small collective)."""

    def __init__(self, width: int, eps: float, *, dtype, device, disable_tp: bool):
        super().__init__()
        self._rank, self._size = (0, 1) if disable_tp else (tp_rank(), tp_size())
        self.width, self.eps = width, eps
        local = divide(width, self._size, "q/k norm width")
        self.weight = nn.Parameter(torch.ones(local, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        square_sum = xf.pow(2).sum(-1, keepdim=True)
        if self._size > 1:
            square_sum = all_reduce(square_sum)
        normed = xf * torch.rsqrt(square_sum / self.width + self.eps)
        return self.weight * normed.to(x.dtype)

    def weight_targets(self, name: str) -> dict[str, WeightTarget]:
        """This rank's columns of the checkpoint's full-width weight."""
        local = self.weight.shape[0]
        key = f"{name}.weight"
        return {key: WeightTarget(self.weight, key, (self.width,), 0, self._rank * local)}


def _norm(config, width: int, dtype, device) -> nn.Module:
    if config.norm_type == "rms_norm":
        return RMSNorm(width, config.layer_norm_eps, dtype=dtype, device=device)
    if config.norm_type == "layer_norm":
        return nn.LayerNorm(width, eps=config.layer_norm_eps, dtype=dtype, device=device)
    raise ValueError(f"InternViT norm_type {config.norm_type!r} is not supported")


class InternVisionAttention(nn.Module):
    """Bidirectional attention within each tile; q/k/v column-, output row-parallel."""

    def __init__(self, config, *, dtype, device, disable_tp: bool):
        super().__init__()
        h = config.hidden_size
        self.head_dim = h // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        kw = dict(dtype=dtype, device=device, disable_tp=disable_tp)
        bias = bool(config.attention_bias)
        self.q_proj = ColumnParallelLinear(h, h, bias=bias, **kw)
        self.k_proj = ColumnParallelLinear(h, h, bias=bias, **kw)
        self.v_proj = ColumnParallelLinear(h, h, bias=bias, **kw)
        self.num_heads = divide(self.q_proj.out_features, self.head_dim, "vision heads")
        self.projection_layer = RowParallelLinear(h, h, bias=True, **kw)
        self.use_qk_norm = bool(config.use_qk_norm)
        if self.use_qk_norm:  # HF's default eps for these norms
            self.q_norm = ShardedRMSNorm(h, 1e-6, **kw)
            self.k_norm = ShardedRMSNorm(h, 1e-6, **kw)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        shape = (x.shape[0], self.num_heads, self.head_dim)
        out = varlen_attention(q.view(shape), k.view(shape), v.view(shape), cu_seqlens, self.scale)
        return self.projection_layer(out.reshape(x.shape[0], -1))


class InternVisionMLP(nn.Module):
    """fc1 (column-parallel) -> activation -> fc2 (row-parallel)."""

    def __init__(self, config, *, dtype, device, disable_tp: bool):
        super().__init__()
        kw = dict(bias=True, dtype=dtype, device=device, disable_tp=disable_tp)
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.intermediate_size, **kw)
        self.act = get_activation(config.hidden_act)
        self.fc2 = RowParallelLinear(config.intermediate_size, config.hidden_size, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InternVisionLayer(nn.Module):
    """Pre-norm block with layer scale (``lambda_1`` / ``lambda_2``), HF names."""

    def __init__(self, config, *, dtype, device, disable_tp: bool):
        super().__init__()
        h = config.hidden_size
        kw = dict(dtype=dtype, device=device, disable_tp=disable_tp)
        self.attention = InternVisionAttention(config, **kw)
        self.mlp = InternVisionMLP(config, **kw)
        self.layernorm_before = _norm(config, h, dtype, device)
        self.layernorm_after = _norm(config, h, dtype, device)
        self.lambda_1 = nn.Parameter(torch.ones(h, dtype=dtype, device=device))
        self.lambda_2 = nn.Parameter(torch.ones(h, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        x = x + self.lambda_1 * self.attention(self.layernorm_before(x), cu_seqlens)
        return x + self.lambda_2 * self.mlp(self.layernorm_after(x))


class InternVisionEmbeddings(nn.Module):
    """Patch conv + class token + learned absolute positions, for tiles of the config's size."""

    def __init__(self, config, *, dtype, device):
        super().__init__()
        h = config.hidden_size
        self.image_size, self.patch_size = _pair(config.image_size), _pair(config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, h, dtype=dtype, device=device))
        if config.use_mask_token:  # masked-image pre-training only; kept to load the checkpoint
            self.mask_token = nn.Parameter(torch.zeros(1, 1, h, dtype=dtype, device=device))
        self.patch_embeddings = nn.Module()
        self.patch_embeddings.projection = nn.Conv2d(
            config.num_channels,
            h,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            dtype=dtype,
            device=device,
        )
        grid = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.grid = grid
        self.num_tokens = grid[0] * grid[1] + 1
        self.position_embeddings = None
        if config.use_absolute_position_embeddings:
            self.position_embeddings = nn.Parameter(
                torch.zeros(1, self.num_tokens, h, dtype=dtype, device=device)
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, C, S, S]`` -> ``[N, 1 + (S/P)^2, hidden]``."""
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise ValueError(
                f"InternViT tiles must be {self.image_size[0]}x{self.image_size[1]} pixels, "
                f"got {tuple(pixel_values.shape[-2:])}"
            )
        projection = self.patch_embeddings.projection
        patches = projection(pixel_values.to(projection.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1)
        return x if self.position_embeddings is None else x + self.position_embeddings


class InternVisionTower(nn.Module):
    """InternViT up to the feature layer; weight names as HF ``InternVLVisionModel``.

    Args:
        config: the ``InternVLVisionConfig``.
        feature_layer: HF ``vision_feature_layer`` (see :func:`resolve_feature_layer`).
        dtype, device: of the parameters.

    Tensor parallel like the LM unless ``mm_encoder_tp_mode="data"`` (replicated).
    """

    def __init__(self, config, feature_layer, *, dtype, device):
        super().__init__()
        self.num_layers_used, self.final_norm = resolve_feature_layer(
            feature_layer, config.num_hidden_layers
        )
        self.embeddings = InternVisionEmbeddings(config, dtype=dtype, device=device)
        disable_tp = encoder_tp_disabled()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            InternVisionLayer(config, dtype=dtype, device=device, disable_tp=disable_tp)
            for _ in range(self.num_layers_used)
        )
        # HF: an identity with mean pooling (InternVL 3), a LayerNorm otherwise
        self.use_layernorm = self.final_norm and not config.use_mean_pooling
        if self.use_layernorm:
            self.layernorm = nn.LayerNorm(
                config.hidden_size, eps=config.layer_norm_eps, dtype=dtype, device=device
            )
        self.grid = self.embeddings.grid
        self.hidden_size = config.hidden_size

    def uses_weight(self, name: str) -> bool:
        """False for tower weights (``name`` relative) that the feature layer never needs."""
        if name.startswith("encoder.layer."):
            return int(name.split(".")[2]) < self.num_layers_used
        if name.startswith("layernorm."):
            return self.use_layernorm
        return True

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Features of each tile, class token included: ``[N, C, S, S]`` -> ``[N, tokens, hidden]``."""
        x = self.embeddings(pixel_values)
        num_tiles, seq_len, _ = x.shape
        x = x.reshape(num_tiles * seq_len, -1)
        cu_seqlens = torch.arange(
            0, (num_tiles + 1) * seq_len, seq_len, dtype=torch.int32, device=x.device
        )
        for layer in self.encoder.layer:
            x = layer(x, cu_seqlens)
        if self.use_layernorm:
            x = self.layernorm(x)
        return x.view(num_tiles, seq_len, -1)
