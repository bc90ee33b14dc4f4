"""Qwen2-VL and Qwen2.5-VL: packed vision tower -> 2x2 merger -> Qwen2 LM with M-RoPE."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mmcore.layers.sharded_weights import weight_shape
from mmcore.models.llama import LlamaForCausalLM
from mmcore.models.lm_delegate import DelegatesToLanguageModel
from mmcore.models.qwen2_vl.processor import expand_image_patches
from mmcore.models.qwen2_vl.vision import Qwen2VisionTower
from mmcore.models.weights import load_named_weights

# Checkpoint prefixes -> module prefixes: transformers 5 layout first, then the published one.
_PREFIX_RENAMES = (
    ("model.visual.", "visual."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.", "language_model.model."),
)
# What encode() reads for each modality: (patches key, grid key).
_ITEM_KEYS = {
    "image": ("pixel_values", "image_grid_thw"),
    "video": ("pixel_values_videos", "video_grid_thw"),
}


def canonical_weight_name(name: str) -> str:
    """Map either HF key layout of a Qwen2(.5)-VL checkpoint to mmcore's module names."""
    if name.startswith("visual."):
        return name
    for old, new in _PREFIX_RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _check_text_config(text) -> None:
    layer_types = getattr(text, "layer_types", None) or []
    if "sliding_attention" in layer_types:
        raise ValueError("Qwen2-VL language models with sliding-window layers are not supported")


class Qwen2VLModel(DelegatesToLanguageModel, nn.Module):
    """Qwen2-VL / Qwen2.5-VL (HF ``Qwen2VLForConditionalGeneration`` and
    ``Qwen2_5_VLForConditionalGeneration``), mmcore's model contract with M-RoPE.

    Items for :meth:`encode`: images ``{"pixel_values": [patches, C*P*P] (or HF's
    [patches, C*T*P*P]), "image_grid_thw": int64 [3]}``, videos ``{"pixel_values_videos": ..., "video_grid_thw": ...}`` (what
    :class:`mmcore.models.qwen2_vl.processor.Qwen2VLMultiModalProcessor` makes).
    """

    supported_modalities = ("image", "video")
    uses_mrope = True
    supports_tensor_parallel = True  # vision tower, merger and Qwen2 LM from parallel layers

    def __init__(self, hf_config, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.config = hf_config
        text = hf_config.get_text_config()
        _check_text_config(text)
        self.visual = Qwen2VisionTower(hf_config.vision_config, dtype=dtype, device=device)
        if self.visual.output_size != text.hidden_size:
            raise ValueError(
                f"vision tower output {self.visual.output_size} differs from the LM width "
                f"{text.hidden_size}"
            )
        self.language_model = LlamaForCausalLM(
            text,
            dtype=dtype,
            device=device,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", None),
            qkv_bias=True,
        )
        self.adopt_language_model_sizes()
        self.dtype, self.device = dtype, torch.device(device)

    # -- weights -------------------------------------------------------------------------------
    def _module_name(self, checkpoint_name: str) -> str | None:
        name = canonical_weight_name(checkpoint_name)
        if name.endswith("rotary_emb.inv_freq"):
            return None  # buffer saved by old checkpoints; recomputed from the config
        if name == "language_model.lm_head.weight" and self.language_model.tie_word_embeddings:
            return None  # tied: the embedding matrix serves as the head
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors (either key layout); raises naming missing/unexpected weights."""

        def as_linear(named):
            for name, tensor in named:
                if name.endswith("patch_embed.proj.weight") and len(weight_shape(tensor)) == 5:
                    tensor = tensor[...]  # read a lazy (sharded-load) tensor whole: replicated
                    tensor = tensor.reshape(tensor.shape[0], -1)  # Conv3d kernel -> GEMM
                yield name, tensor

        load_named_weights(self, as_linear(weights), self._module_name)

    # -- encoder -------------------------------------------------------------------------------
    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Merged embeddings ``[t*h*w / 4, hidden]`` per item; all items in one packed tower run."""
        if modality not in _ITEM_KEYS:
            raise ValueError(f"{self.config.model_type} does not accept {modality} input")
        if not items:
            return []
        pixels_key, grid_key = _ITEM_KEYS[modality]
        grids = [tuple(int(v) for v in item[grid_key].reshape(-1).tolist()) for item in items]
        patch_dim, temporal = self.visual.patch_dim, self.visual.temporal
        parts = []
        for item, (t, h, w) in zip(items, grids):
            pixels = item[pixels_key].to(self.device)
            if modality == "image":  # one frame per patch -> HF's temporal layout, on device
                pixels = expand_image_patches(pixels, temporal, patch_dim)
            if pixels.shape != (t * h * w, patch_dim):
                raise ValueError(
                    f"{pixels_key} must be [{t * h * w}, {patch_dim}] for grid {[t, h, w]}, "
                    f"got {list(item[pixels_key].shape)}"
                )
            parts.append(pixels)
        pixels = torch.cat(parts)
        merged = self.visual(pixels, grids)
        return list(merged.split([self.visual.num_embeds(g) for g in grids]))
