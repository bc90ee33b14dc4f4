"""LLaVA-1.5: CLIP vision tower -> 2-layer MLP projector -> Llama, per the HF checkpoint."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mmcore.distributed.parallel_state import encoder_tp_disabled
from mmcore.layers.activations import get_activation
from mmcore.layers.linear import ColumnParallelLinear, RowParallelLinear
from mmcore.models.clip import CLIPVisionTower
from mmcore.models.llama import LlamaForCausalLM
from mmcore.models.lm_delegate import DelegatesToLanguageModel
from mmcore.models.weights import load_named_weights

# Checkpoint prefixes -> module prefixes. Published LLaVA checkpoints use the right-hand
# layout already; transformers 5 models save the left-hand one.
_PREFIX_RENAMES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
    ("vision_tower.vision_model.", "vision_tower."),
)


def canonical_weight_name(name: str) -> str:
    """Map either HF key layout of a LLaVA-family checkpoint to mmcore's module names."""
    for old, new in _PREFIX_RENAMES:
        if name.startswith(old):
            name = new + name[len(old) :]
    return name


class LlavaMultiModalProjector(nn.Module):
    """``linear_2(act(linear_1(features)))`` from vision feature width to the LM width
    (tensor parallel: linear_1 column-, linear_2 row-parallel, one all-reduce)."""

    def __init__(self, hf_config, in_features: int, *, dtype, device):
        super().__init__()
        out = hf_config.text_config.hidden_size
        bias = getattr(hf_config, "multimodal_projector_bias", True)
        kw = dict(bias=bias, dtype=dtype, device=device, disable_tp=encoder_tp_disabled())
        self.linear_1 = ColumnParallelLinear(in_features, out, **kw)
        self.act = get_activation(hf_config.projector_hidden_act)
        self.linear_2 = RowParallelLinear(out, out, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


SUPPORTED_TEXT_MODELS = ("llama", "mistral")  # Mistral = Llama + sliding window


def _check_supported(hf_config) -> None:
    vision_type = hf_config.vision_config.model_type
    text_type = hf_config.text_config.model_type
    if vision_type != "clip_vision_model":
        raise ValueError(f"{hf_config.model_type}: vision tower {vision_type!r} is not supported")
    if text_type not in SUPPORTED_TEXT_MODELS:
        raise ValueError(f"{hf_config.model_type}: language model {text_type!r} is not supported")


def _one_image(pixel_values: torch.Tensor) -> torch.Tensor:
    if pixel_values.dim() == 4 and pixel_values.shape[0] == 1:
        return pixel_values[0]
    if pixel_values.dim() != 3:
        raise ValueError(
            f"expected pixel_values [3, H, W] per image, got {tuple(pixel_values.shape)}"
        )
    return pixel_values


class LlavaModel(DelegatesToLanguageModel, nn.Module):
    """LLaVA-1.5 (HF ``LlavaForConditionalGeneration``), mmcore's model contract.

    Items for :meth:`encode` are ``{"pixel_values": [3, S, S]}`` (one cropped image each).
    """

    supported_modalities = ("image",)
    supports_tensor_parallel = True  # CLIP, projector and Llama built from parallel layers

    def __init__(self, hf_config, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        _check_supported(hf_config)
        self.config = hf_config
        self.vision_tower = CLIPVisionTower(
            hf_config.vision_config,
            hf_config.vision_feature_layer,
            hf_config.vision_feature_select_strategy,
            dtype=dtype,
            device=device,
        )
        self.multi_modal_projector = LlavaMultiModalProjector(
            hf_config, self.vision_tower.output_size, dtype=dtype, device=device
        )
        # HF ties lm_head to the embeddings by the top-level config's flag
        self.language_model = LlamaForCausalLM(
            hf_config.text_config,
            dtype=dtype,
            device=device,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", None),
        )
        self.adopt_language_model_sizes()
        self.dtype, self.device = dtype, torch.device(device)

    # -- weights -------------------------------------------------------------------------------
    def _module_name(self, checkpoint_name: str) -> str | None:
        name = canonical_weight_name(checkpoint_name)
        if name.startswith("vision_tower.") and not self.vision_tower.uses_weight(
            name[len("vision_tower.") :]
        ):
            return None
        if name.endswith("rotary_emb.inv_freq"):
            return None  # buffer saved by old checkpoints; recomputed from the config
        if name == "language_model.lm_head.weight" and self.language_model.tie_word_embeddings:
            return None  # tied: the embedding matrix serves as the head
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors (either key layout); raises naming missing/unexpected weights."""
        load_named_weights(self, weights, self._module_name)

    # -- encoder -------------------------------------------------------------------------------
    def _check_modality(self, modality: str) -> None:
        if modality not in self.supported_modalities:
            raise ValueError(f"{self.config.model_type} does not accept {modality} input")

    def encode_tiles(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected features of square tiles ``[N, 3, S, S]`` -> ``[N, tokens, hidden]``."""
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        return self.multi_modal_projector(self.vision_tower(pixel_values))

    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Projected embeddings ``[num_embeds, hidden]`` per item, all items in one tower call."""
        self._check_modality(modality)
        if not items:
            return []
        pixels = torch.stack([_one_image(item["pixel_values"]) for item in items])
        return list(self.encode_tiles(pixels).unbind(0))
