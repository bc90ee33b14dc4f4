"""Gemma 3: SigLIP tower -> pooled, normed projection -> Gemma 3 LM (sliding + global layers).

Image tokens of one image attend to each other both ways (``bidirectional_mm_spans``): the
runner opens each image token's causal bound to the end of its span, and the scheduler never
ends a prefill chunk inside an image (a chunk boundary would cut the span in two).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mmcore.models.gemma3.text import Gemma3ForCausalLM
from mmcore.models.gemma3.vision import Gemma3Projector, SiglipVisionTower
from mmcore.models.lm_delegate import DelegatesToLanguageModel
from mmcore.models.weights import load_named_weights

# Checkpoint prefixes -> module prefixes: transformers 5 in-memory layout, then the layouts
# checkpoints are saved in (published Gemma 3 checkpoints: ``vision_tower.vision_model.``).
_PREFIX_RENAMES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("lm_head.", "language_model.lm_head."),
)


def canonical_weight_name(name: str) -> str:
    """Map any HF key layout of a Gemma 3 checkpoint to mmcore's module names."""
    for old, new in _PREFIX_RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


class Gemma3Model(DelegatesToLanguageModel, nn.Module):
    """Gemma 3 (HF ``Gemma3ForConditionalGeneration``), mmcore's model contract.

    Items for :meth:`encode`: ``{"pixel_values": [1 + crops, 3, S, S]}`` per image (the image
    and its pan-and-scan crops, from
    :class:`mmcore.models.gemma3.processor.Gemma3MultiModalProcessor`); each view gives
    ``mm_tokens_per_image`` embeddings.
    """

    supported_modalities = ("image",)
    supports_tensor_parallel = True
    bidirectional_mm_spans = True

    def __init__(self, hf_config, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.config = hf_config
        text = hf_config.text_config
        self.vision_tower = SiglipVisionTower(hf_config.vision_config, dtype=dtype, device=device)
        self.multi_modal_projector = Gemma3Projector(hf_config, dtype=dtype, device=device)
        self.language_model = Gemma3ForCausalLM(
            text,
            dtype=dtype,
            device=device,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", True),
        )
        self.adopt_language_model_sizes()
        self.layer_sliding_windows = self.language_model.layer_sliding_windows
        self.tokens_per_view = self.multi_modal_projector.num_tokens
        self.dtype, self.device = dtype, torch.device(device)

    # -- weights -------------------------------------------------------------------------------
    def _module_name(self, checkpoint_name: str) -> str | None:
        name = canonical_weight_name(checkpoint_name)
        if name == "language_model.lm_head.weight" and self.language_model.tie_word_embeddings:
            return None  # tied: the embedding matrix serves as the head
        if name.startswith("vision_tower.") and not self.vision_tower.uses_weight(
            name[len("vision_tower.") :]
        ):
            return None
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors (any key layout); raises naming missing/unexpected weights."""
        load_named_weights(self, weights, self._module_name)

    # -- encoder -------------------------------------------------------------------------------
    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """``[views * mm_tokens_per_image, hidden]`` per image; all views in one tower run."""
        if modality != "image":
            raise ValueError(f"{self.config.model_type} does not accept {modality} input")
        if not items:
            return []
        views = []
        for item in items:
            pixels = item["pixel_values"]
            if pixels.dim() == 3:
                pixels = pixels[None]
            if pixels.dim() != 4:
                raise ValueError(f"pixel_values must be [views, 3, S, S], got {list(pixels.shape)}")
            views.append(pixels.to(self.device))
        counts = [v.shape[0] for v in views]
        features = self.multi_modal_projector(self.vision_tower(torch.cat(views)))
        return [f.reshape(-1, self.hidden_size) for f in features.split(counts)]
