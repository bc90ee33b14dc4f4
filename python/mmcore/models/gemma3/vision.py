"""SigLIP vision tower and Gemma 3's pooling projector.

SigLIP is CLIP's encoder without the class token or pre-norm: patch conv (with bias) plus
learned positions, encoder layers (same shape as CLIP's, reused from ``mmcore.models.clip``,
GELU-tanh), then ``post_layernorm``. Gemma 3 average-pools the patch grid down to
``mm_tokens_per_image`` tokens, RMS-norms them (``1 + weight``) and projects to the LM width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcore.distributed.parallel_state import encoder_tp_disabled
from mmcore.models.clip import CLIPEncoderLayer
from mmcore.models.gemma3.text import GemmaRMSNorm


class SiglipVisionTower(nn.Module):
    """SigLIP ViT (HF ``SiglipVisionModel`` without its pooling head); weight names as HF's
    ``vision_tower.*``. Images of one call are packed into one varlen batch.

    Tensor parallel like CLIP (heads and MLP rows split), unless ``mm_encoder_tp_mode="data"``.
    """

    def __init__(self, config, *, dtype, device):
        super().__init__()
        h = config.hidden_size
        self.image_size, self.patch_size = config.image_size, config.patch_size
        self.grid = self.image_size // self.patch_size
        self.embeddings = nn.Module()
        self.embeddings.patch_embedding = nn.Conv2d(
            config.num_channels,
            h,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=True,
            dtype=dtype,
            device=device,
        )
        self.embeddings.position_embedding = nn.Embedding(
            self.grid**2, h, dtype=dtype, device=device
        )
        self.encoder = nn.Module()
        disable_tp = encoder_tp_disabled()
        self.encoder.layers = nn.ModuleList(
            CLIPEncoderLayer(config, dtype=dtype, device=device, disable_tp=disable_tp)
            for _ in range(config.num_hidden_layers)
        )
        self.post_layernorm = nn.LayerNorm(h, eps=config.layer_norm_eps, dtype=dtype, device=device)
        self.hidden_size = h

    @staticmethod
    def uses_weight(name: str) -> bool:
        """False for tower weights Gemma 3 never reads (``name`` relative to the tower)."""
        return not name.startswith(("head.", "embeddings.position_ids"))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, C, S, S]`` -> last hidden states ``[N, (S/P)^2, hidden]``."""
        if tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])}, the vision tower takes "
                f"{self.image_size}x{self.image_size}"
            )
        conv = self.embeddings.patch_embedding
        patches = conv(pixel_values.to(conv.weight.dtype)).flatten(2).transpose(1, 2)
        hidden = patches + self.embeddings.position_embedding.weight[None]
        num_images, seq_len = hidden.shape[:2]
        hidden = hidden.reshape(num_images * seq_len, -1)
        cu_seqlens = torch.arange(
            0, (num_images + 1) * seq_len, seq_len, dtype=torch.int32, device=hidden.device
        )
        for layer in self.encoder.layers:
            hidden = layer(hidden, cu_seqlens)
        return self.post_layernorm(hidden).view(num_images, seq_len, -1)


class Gemma3Projector(nn.Module):
    """Average-pool the patch grid to ``mm_tokens_per_image`` tokens, RMS-norm, project
    (HF ``Gemma3MultiModalProjector``; replicated on every rank: one small matrix)."""

    def __init__(self, hf_config, *, dtype, device):
        super().__init__()
        vision, text = hf_config.vision_config, hf_config.text_config
        self.mm_input_projection_weight = nn.Parameter(
            torch.zeros(vision.hidden_size, text.hidden_size, dtype=dtype, device=device)
        )
        self.mm_soft_emb_norm = GemmaRMSNorm(
            vision.hidden_size, vision.layer_norm_eps, dtype=dtype, device=device
        )
        self.grid = vision.image_size // vision.patch_size
        self.tokens_per_side = int(round(hf_config.mm_tokens_per_image**0.5))
        if self.tokens_per_side**2 != hf_config.mm_tokens_per_image or (
            self.grid % self.tokens_per_side
        ):
            raise ValueError(
                f"mm_tokens_per_image {hf_config.mm_tokens_per_image} must be a square whose "
                f"side divides the {self.grid}x{self.grid} patch grid"
            )
        self.kernel = self.grid // self.tokens_per_side
        self.num_tokens = hf_config.mm_tokens_per_image

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, grid^2, vision hidden]`` -> ``[N, mm_tokens_per_image, text hidden]``."""
        n, _, width = features.shape
        grid = features.transpose(1, 2).reshape(n, width, self.grid, self.grid)
        pooled = F.avg_pool2d(grid, self.kernel, self.kernel).flatten(2).transpose(1, 2)
        normed = self.mm_soft_emb_norm(pooled.reshape(-1, width)).view(n, -1, width)
        return torch.matmul(normed, self.mm_input_projection_weight).to(features.dtype)
