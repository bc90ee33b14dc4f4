"""CLIP vision tower returning the hidden states LLaVA-style projectors read.

All tiles/images of a call are packed into one ``[sum(tokens), hidden]`` batch and attend only
within their own sequence (varlen attention), so nothing is padded. Only the layers up to the
deepest requested feature layer run; ``post_layernorm`` is never needed for features.
"""

from __future__ import annotations

import torch
from torch import nn

from mmcore.distributed.parallel_state import encoder_tp_disabled
from mmcore.layers.activations import get_activation
from mmcore.layers.attention import varlen_attention
from mmcore.layers.linear import ColumnParallelLinear, RowParallelLinear, divide


def resolve_feature_layers(feature_layer: int | list[int], num_layers: int) -> list[int]:
    """Map HF ``vision_feature_layer`` (hidden-state indices, may be negative) to 0..num_layers.

    ``hidden_states[0]`` is the embedding output (after ``pre_layrnorm``), ``hidden_states[i]``
    the output of encoder layer ``i - 1``.

    Raises:
        ValueError: for an index outside the ``num_layers + 1`` hidden states.
    """
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    if not layers:
        raise ValueError("vision_feature_layer is an empty list")
    num_states = num_layers + 1
    resolved = []
    for layer in layers:
        if not -num_states <= layer < num_states:
            raise ValueError(
                f"vision_feature_layer {layer} is out of range for {num_layers} CLIP layers"
            )
        resolved.append(layer % num_states)
    return resolved


class CLIPAttention(nn.Module):
    """Bidirectional attention; tensor parallel by heads (q/k/v column, out_proj row-parallel)."""

    def __init__(self, config, *, dtype, device, disable_tp: bool = False):
        super().__init__()
        h = config.hidden_size
        self.head_dim = h // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        kw = dict(bias=True, dtype=dtype, device=device, disable_tp=disable_tp)
        self.q_proj = ColumnParallelLinear(h, h, **kw)
        self.k_proj = ColumnParallelLinear(h, h, **kw)
        self.v_proj = ColumnParallelLinear(h, h, **kw)
        self.num_heads = divide(self.q_proj.out_features, self.head_dim, "heads")
        self.out_proj = RowParallelLinear(h, h, **kw)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], self.num_heads, self.head_dim)
        q, k, v = (proj(x).view(shape) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = varlen_attention(q, k, v, cu_seqlens, self.scale)
        return self.out_proj(out.reshape(x.shape[0], -1))


class CLIPMLP(nn.Module):
    """fc1 (column-parallel) -> activation -> fc2 (row-parallel, one all-reduce)."""

    def __init__(self, config, *, dtype, device, disable_tp: bool = False):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        kw = dict(bias=True, dtype=dtype, device=device, disable_tp=disable_tp)
        self.fc1 = ColumnParallelLinear(h, i, **kw)
        self.fc2 = RowParallelLinear(i, h, **kw)
        self.act = get_activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config, *, dtype, device, disable_tp: bool = False):
        super().__init__()
        h, eps = config.hidden_size, config.layer_norm_eps
        kw = dict(dtype=dtype, device=device, disable_tp=disable_tp)
        self.layer_norm1 = nn.LayerNorm(h, eps=eps, dtype=dtype, device=device)
        self.self_attn = CLIPAttention(config, **kw)
        self.layer_norm2 = nn.LayerNorm(h, eps=eps, dtype=dtype, device=device)
        self.mlp = CLIPMLP(config, **kw)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), cu_seqlens)
        return x + self.mlp(self.layer_norm2(x))


class CLIPVisionEmbeddings(nn.Module):
    """Patch conv + class token + learned positions, for images of the config's square size."""

    def __init__(self, config, *, dtype, device):
        super().__init__()
        h = config.hidden_size
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(h, dtype=dtype, device=device))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            h,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=False,
            dtype=dtype,
            device=device,
        )
        self.num_positions = (self.image_size // self.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, h, dtype=dtype, device=device)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, C, S, S]`` -> ``[N, 1 + (S/P)^2, hidden]``."""
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])}, the vision tower takes "
                f"{self.image_size}x{self.image_size}"
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight[None]


class CLIPVisionTower(nn.Module):
    """CLIP ViT up to the deepest feature layer; weight names as HF ``CLIPVisionModel``.

    Args:
        config: the ``CLIPVisionConfig``.
        feature_layer: HF ``vision_feature_layer`` (int or list; lists are concatenated).
        select_strategy: ``"default"`` drops the CLS token, ``"full"`` keeps it.

    Tensor parallel like the LM (heads and MLP rows split over the ranks), unless
    ``mm_encoder_tp_mode="data"``: then every rank holds the whole tower and encodes a share of
    the step's items (see :mod:`mmcore.engine.runner`).
    """

    def __init__(self, config, feature_layer, select_strategy: str, *, dtype, device):
        super().__init__()
        if select_strategy not in ("default", "full"):
            raise ValueError(f"unknown vision_feature_select_strategy {select_strategy!r}")
        self.feature_layers = resolve_feature_layers(feature_layer, config.num_hidden_layers)
        self.select_strategy = select_strategy
        self.num_layers_used = max(self.feature_layers)
        self.embeddings = CLIPVisionEmbeddings(config, dtype=dtype, device=device)
        self.pre_layrnorm = nn.LayerNorm(
            config.hidden_size, eps=config.layer_norm_eps, dtype=dtype, device=device
        )
        self.encoder = nn.Module()
        disable_tp = encoder_tp_disabled()
        self.encoder.layers = nn.ModuleList(
            CLIPEncoderLayer(config, dtype=dtype, device=device, disable_tp=disable_tp)
            for _ in range(self.num_layers_used)
        )
        self.num_tokens = self.embeddings.num_positions - (select_strategy == "default")
        self.output_size = config.hidden_size * len(self.feature_layers)

    def uses_weight(self, name: str) -> bool:
        """False for checkpoint weights of this tower that features never need (``name`` relative)."""
        if name.startswith("post_layernorm."):
            return False
        if name.startswith("embeddings.position_ids"):
            return False  # a buffer some old checkpoints saved
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2]) < self.num_layers_used
        return True

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Features of each image/tile: ``[N, C, S, S]`` -> ``[N, num_tokens, output_size]``."""
        num_images = pixel_values.shape[0]
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        seq_len = hidden.shape[1]
        hidden = hidden.reshape(num_images * seq_len, -1)
        cu_seqlens = torch.arange(
            0, (num_images + 1) * seq_len, seq_len, dtype=torch.int32, device=hidden.device
        )
        wanted = set(self.feature_layers)
        states = {0: hidden} if 0 in wanted else {}
        for i, layer in enumerate(self.encoder.layers, start=1):
            hidden = layer(hidden, cu_seqlens)
            if i in wanted:
                states[i] = hidden
        features = torch.cat([states[i] for i in self.feature_layers], dim=-1)
        features = features.view(num_images, seq_len, -1)
        return features[:, 1:] if self.select_strategy == "default" else features
