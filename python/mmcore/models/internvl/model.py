"""InternVL 3 (HF ``InternVLForConditionalGeneration``): InternViT -> pixel shuffle -> MLP -> Qwen2.

Each 448 px tile (or video frame) gives ``(S/P)^2`` patch features (the class token dropped);
pixel shuffle folds every 2x2 block of them into one feature of 4x the width
(``downsample_ratio`` 0.5), and the projector maps it to the LM width::

    tile [3, 448, 448] -> InternViT [1025, 1024] -> drop CLS [32, 32, 1024]
        -> pixel shuffle [16, 16, 4096] -> LayerNorm, linear, GELU, linear -> [256, hidden]
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mmcore.distributed.parallel_state import encoder_tp_disabled
from mmcore.layers.activations import get_activation
from mmcore.layers.linear import ColumnParallelLinear, RowParallelLinear
from mmcore.models.internvl.tiling import normalize_tiles
from mmcore.models.internvl.vision import InternVisionTower
from mmcore.models.llama import LlamaForCausalLM
from mmcore.models.lm_delegate import DelegatesToLanguageModel
from mmcore.models.weights import load_named_weights

# Checkpoint prefixes (transformers 5 layout) -> module prefixes.
_PREFIX_RENAMES = (
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
# Language models InternVL 3 checkpoints pair with (Qwen2 / Qwen2.5), and their q/k/v bias.
_TEXT_MODELS = {"qwen2": True}


def canonical_weight_name(name: str) -> str:
    """Map an HF InternVL checkpoint key to mmcore's module name."""
    for old, new in _PREFIX_RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def pixel_shuffle(features: torch.Tensor, scale: float) -> torch.Tensor:
    """HF InternVL's pixel shuffle: ``[N, h, w, C] -> [N, h*s, w*s, C/s^2]`` (s = ``scale``),
    folding neighbouring columns, then neighbouring rows, into the channels."""
    n, h, w, c = features.shape
    if (h * scale) % 1 or (w * scale) % 1:
        raise ValueError(f"a {h}x{w} feature grid does not downsample by {scale}")
    x = features.reshape(n, h, int(w * scale), int(c / scale)).permute(0, 2, 1, 3)
    x = x.reshape(n, int(w * scale), int(h * scale), int(c / scale**2))
    return x.permute(0, 2, 1, 3)


class InternVLMultiModalProjector(nn.Module):
    """LayerNorm, then ``linear_2(act(linear_1(x)))`` (linear_1 column-, linear_2 row-parallel)."""

    def __init__(self, hf_config, in_features: int, *, dtype, device):
        super().__init__()
        out = hf_config.text_config.hidden_size
        self.layer_norm = nn.LayerNorm(in_features, dtype=dtype, device=device)
        kw = dict(bias=True, dtype=dtype, device=device, disable_tp=encoder_tp_disabled())
        self.linear_1 = ColumnParallelLinear(in_features, out, **kw)
        self.act = get_activation(hf_config.projector_hidden_act)
        self.linear_2 = RowParallelLinear(out, out, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.layer_norm(x))))


def _check_supported(hf_config) -> bool | None:
    """q/k/v bias of the LM; ValueError for what this implementation does not run."""
    text = hf_config.text_config
    if text.model_type not in _TEXT_MODELS:
        raise ValueError(
            f"InternVL with a {text.model_type!r} language model is not supported "
            f"(supported: {sorted(_TEXT_MODELS)})"
        )
    if getattr(text, "use_sliding_window", False):
        raise ValueError("InternVL language models with sliding-window layers are not supported")
    if hf_config.vision_feature_select_strategy != "default":
        raise ValueError(
            "InternVL needs vision_feature_select_strategy 'default' (the class token dropped "
            f"before pixel shuffle), got {hf_config.vision_feature_select_strategy!r}"
        )
    return _TEXT_MODELS[text.model_type]


class InternVLModel(DelegatesToLanguageModel, nn.Module):
    """InternVL 2.5 / 3 in HF format (``model_type`` ``internvl``), mmcore's model contract.

    Items for :meth:`encode`: ``{"pixel_values": [tiles, 3, S, S]}`` for an image (its tiles
    and thumbnail) and for a video (one tile per frame): uint8 with ``image_mean`` /
    ``image_std`` (normalized on the device), or float already normalized; as
    :class:`mmcore.models.internvl.processor.InternVLMultiModalProcessor` makes them; each tile
    gives ``image_seq_length`` embeddings.
    """

    supported_modalities = ("image", "video")
    supports_tensor_parallel = True  # InternViT, projector and LM built from parallel layers

    def __init__(self, hf_config, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        qkv_bias = _check_supported(hf_config)
        self.config = hf_config
        self.downsample_ratio = float(hf_config.downsample_ratio)
        self.vision_tower = InternVisionTower(
            hf_config.vision_config, hf_config.vision_feature_layer, dtype=dtype, device=device
        )
        fold = int(1 / self.downsample_ratio) ** 2
        self.multi_modal_projector = InternVLMultiModalProjector(
            hf_config, self.vision_tower.hidden_size * fold, dtype=dtype, device=device
        )
        rows, cols = self.vision_tower.grid
        self.tokens_per_tile = int(rows * self.downsample_ratio) * int(cols * self.downsample_ratio)
        self.language_model = LlamaForCausalLM(
            hf_config.text_config,
            dtype=dtype,
            device=device,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", None),
            qkv_bias=qkv_bias,
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
        """Load HF-named tensors; raises naming missing/unexpected weights."""
        load_named_weights(self, weights, self._module_name)

    # -- encoder -------------------------------------------------------------------------------
    def encode_tiles(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected embeddings of tiles ``[N, 3, S, S]`` -> ``[N, tokens_per_tile, hidden]``."""
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        features = self.vision_tower(pixel_values)[:, 1:]  # the class token is not used
        rows, cols = self.vision_tower.grid
        features = features.reshape(features.shape[0], rows, cols, -1)
        shuffled = pixel_shuffle(features, self.downsample_ratio)
        shuffled = shuffled.reshape(features.shape[0], -1, shuffled.shape[-1])
        return self.multi_modal_projector(shuffled)

    def normalized_pixels(self, item: dict[str, torch.Tensor]) -> torch.Tensor:
        """An item's tiles as float ``[tiles, 3, S, S]``: uint8 tiles (the processor's) are
        normalized here, on the device, with the item's ``image_mean`` / ``image_std``."""
        pixels = item["pixel_values"].to(self.device)
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(
                f"InternVL pixel_values must be [tiles, 3, H, W], got {list(pixels.shape)}"
            )
        if pixels.dtype != torch.uint8:
            return pixels
        if "image_mean" not in item or "image_std" not in item:
            raise ValueError("uint8 InternVL pixel_values need 'image_mean' and 'image_std'")
        return normalize_tiles(pixels, item["image_mean"], item["image_std"])

    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """``[tiles * tokens_per_tile, hidden]`` per item; all tiles of all items in one call."""
        if modality not in self.supported_modalities:
            raise ValueError(f"{self.config.model_type} does not accept {modality} input")
        if not items:
            return []
        tiles = [self.normalized_pixels(item) for item in items]
        embeds = self.encode_tiles(torch.cat(tiles))
        counts = [t.shape[0] for t in tiles]
        return [e.reshape(-1, e.shape[-1]) for e in embeds.split(counts)]
