"""A Hugging Face model behind mmcore's model contract (``MultiModalModel``).

The HF class runs as is; only its language model's attention is swapped for mmcore's paged
attention (``attn_implementation="mmcore"``, see ``attention.py``). ``encode`` is the HF
model's own ``get_image_features`` (video, audio alike), ``embed_tokens`` its input
embeddings, ``forward`` its language model over ``inputs_embeds`` and ``compute_logits`` its
LM head in float32 with the family's logit scaling.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch
from torch import nn

from mmcore.models.qwen2_vl.processor import expand_image_patches
from mmcore.models.transformers_backend.attention import (
    ATTN_IMPLEMENTATION,
    LAYER_ATTR,
    paged_step,
    register_attention,
)
from mmcore.models.transformers_backend.checks import check_supported

_MODALITIES = ("image", "video", "audio")
# Where HF decoders keep their layers, and layers their self-attention (Llama-style, GPT-2-style).
_LAYER_LISTS = ("layers", "h")
_ATTENTIONS = ("self_attn", "attn")
# Processor outputs that describe the prompt, not the item.
_PROMPT_KEYS = {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"}


def hf_model_class(hf_config):
    """The transformers class for ``hf_config``: the one its config names if transformers has
    it, else ``AutoModelForImageTextToText`` / ``AutoModelForCausalLM`` by model type.

    Raises:
        ValueError: transformers has no generative class for the model type.
    """
    import transformers
    from transformers.models.auto import modeling_auto

    for name in getattr(hf_config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None and ("ForConditionalGeneration" in name or "ForCausalLM" in name):
            return cls
    model_type = hf_config.model_type
    if model_type in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return transformers.AutoModelForImageTextToText
    if model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return transformers.AutoModelForCausalLM
    raise ValueError(
        f"model type {model_type!r} has no image-text-to-text or causal-LM class in "
        "transformers, so the Transformers backend cannot run it"
    )


def _as_rows(features, hidden_size: int) -> torch.Tensor:
    """HF feature outputs (tensor, list of tensors, or a ModelOutput) as ``[N, hidden]``."""
    if hasattr(features, "pooler_output") and features.pooler_output is not None:
        features = features.pooler_output
    elif hasattr(features, "last_hidden_state"):
        features = features.last_hidden_state
    if isinstance(features, (list, tuple)):
        return torch.cat([_as_rows(f, hidden_size) for f in features])
    return features.reshape(-1, hidden_size)


def _batch_signature(kwargs: dict, index: int) -> tuple:
    """Items with equal signatures are encoded in one call: every value a tensor of at least
    one dimension, shapes and dtypes equal. Anything else gets a signature of its own."""
    if not all(isinstance(v, torch.Tensor) and v.ndim >= 1 for v in kwargs.values()):
        return ("alone", index)
    return tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in kwargs.items()))


def _feature_function(hf_model, modality: str):
    """``get_<modality>_features`` of the HF model or of its base model (some families keep it
    only there)."""
    for owner in (hf_model, getattr(hf_model, "model", None)):
        fn = getattr(owner, f"get_{modality}_features", None)
        if callable(fn):
            return fn
    return None


class TransformersModel(nn.Module):
    """An HF ``...ForConditionalGeneration`` / ``...ForCausalLM`` as an mmcore model.

    Decode steps are captured as CUDA graphs like native models'; a family whose HF forward
    cannot be captured runs eagerly (``eager_if_capture_fails``, logged at start-up).

    Args:
        hf_model: the loaded HF model (eval mode, on its device and dtype).

    Raises:
        ValueError: the model cannot run this way (named reason), e.g. a decoder layer without
            self-attention (state-space or convolution layers) or mixed head sizes.
    """

    eager_if_capture_fails = True

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        config = hf_model.config
        check_supported(config)
        self.hf = hf_model
        self.config = config
        self.decoder = hf_model.get_decoder()
        layers = next(
            (getattr(self.decoder, n) for n in _LAYER_LISTS if hasattr(self.decoder, n)), None
        )
        if layers is None:
            raise ValueError(f"{config.model_type}: cannot find its language model's layers")
        text = config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        for index, layer in enumerate(layers):
            attn = next((getattr(layer, n) for n in _ATTENTIONS if hasattr(layer, n)), None)
            if attn is None:
                raise ValueError(
                    f"{config.model_type}: decoder layer {index} has no self-attention (a "
                    "state-space or convolution layer needs a state cache mmcore does not have)"
                )
            if getattr(attn, "head_dim", head_dim) != head_dim:
                raise ValueError(f"{config.model_type}: layers have different head sizes")
            setattr(attn, LAYER_ATTR, index)
        register_attention()
        self.decoder.config._attn_implementation_internal = ATTN_IMPLEMENTATION
        self.num_layers = len(layers)
        self.num_kv_heads = int(
            getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        )
        self.head_dim = int(head_dim)
        self.hidden_size = int(text.hidden_size)
        self.lm_head = hf_model.get_output_embeddings()
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self._feature_fns = {
            m: fn for m in _MODALITIES if (fn := _feature_function(hf_model, m)) is not None
        }
        self.supported_modalities = tuple(self._feature_fns)
        rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
        self.uses_mrope = "mrope_section" in rope
        # Qwen-VL's native processor sends images as one frame per patch; HF's tower wants the
        # frame repeated over its temporal slots: (temporal patch, patch width) for expansion.
        vision = getattr(config, "vision_config", None)
        temporal = getattr(vision, "temporal_patch_size", None)
        self._temporal_patch = None
        if temporal:
            channels = getattr(vision, "in_channels", None) or getattr(vision, "in_chans", 3)
            self._temporal_patch = (temporal, channels * temporal * vision.patch_size**2)
        # Final-logit transforms transformers applies after the LM head (Cohere, Granite, Gemma).
        self._logit_scale = getattr(text, "logit_scale", None)
        self._logits_divisor = getattr(text, "logits_scaling", None)
        self._softcap = getattr(text, "final_logit_softcapping", None)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load tensors named as this transformers version names them (strict)."""
        state = dict(weights)
        missing, unexpected = self.hf.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")

    def _feature_kwargs(self, item: dict, params, dtype) -> dict:
        """One item's processor output as the feature function's keyword arguments."""
        kwargs = {}
        for key, value in item.items():
            if key in _PROMPT_KEYS or key not in params:
                continue
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    value = value.to(dtype)
                if key.endswith("grid_thw") and value.ndim == 1:
                    value = value[None]  # one item's [t, h, w] as HF's [num_items, 3]
                if key == "pixel_values" and self._temporal_patch is not None:
                    value = expand_image_patches(value, *self._temporal_patch)
            kwargs[key] = value
        return kwargs

    @torch.inference_mode()
    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Rows of the model's own ``get_<modality>_features`` per item.

        Items whose tensors all have the same shapes go through one call, concatenated along
        the first dimension as HF's processors batch them (they then give equal row counts);
        others are encoded alone (HF feature functions take per-family layouts).
        """
        if modality not in self.supported_modalities:
            raise ValueError(f"{self.config.model_type} does not accept {modality} input")
        features_fn = self._feature_fns[modality]
        params = inspect.signature(features_fn).parameters
        dtype = self.lm_head.weight.dtype
        prepared = [self._feature_kwargs(item, params, dtype) for item in items]
        groups: dict[tuple, list[int]] = {}
        for index, kwargs in enumerate(prepared):
            groups.setdefault(_batch_signature(kwargs, index), []).append(index)
        out: list[torch.Tensor | None] = [None] * len(items)
        for indices in groups.values():
            batch = {k: torch.cat([prepared[i][k] for i in indices]) for k in prepared[indices[0]]}
            rows = _as_rows(features_fn(**batch), self.hidden_size).to(dtype)
            if rows.shape[0] % len(indices):
                raise RuntimeError(f"{len(indices)} equal items gave {rows.shape[0]} rows")
            for i, part in zip(indices, rows.split(rows.shape[0] // len(indices))):
                out[i] = part
        return out

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The HF input embeddings ``[T] -> [T, hidden]``."""
        return self.hf.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds, positions, kv_caches, attn) -> torch.Tensor:
        """The HF language model over the step's flattened tokens (one sequence of T)."""
        if self.uses_mrope:
            rows = positions if positions.dim() == 2 else positions.expand(3, -1)
            position_ids = rows[:, None, :]
        else:
            position_ids = (positions if positions.dim() == 1 else positions[0])[None]
        with paged_step(kv_caches, attn):
            out = self.decoder(
                inputs_embeds=inputs_embeds[None],
                position_ids=position_ids,
                attention_mask=None,
                use_cache=False,
            )
        return out.last_hidden_state[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head in float32, with the family's logit scale / soft-capping."""
        logits = self.lm_head(hidden).float()
        if self._logit_scale is not None:
            logits = logits * self._logit_scale
        if self._logits_divisor is not None:
            logits = logits / self._logits_divisor
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits
