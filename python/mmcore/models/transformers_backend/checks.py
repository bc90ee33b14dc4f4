"""What the Transformers backend cannot run, found from the config before anything is built.

Every refusal names the model type and the reason; a model that would need an attention
pattern mmcore's paged attention cannot express is refused rather than run to a wrong answer.
"""

from __future__ import annotations

# Model types whose language model attends bidirectionally within image spans (token types).
_BIDIRECTIONAL_IMAGE_SPANS = {
    "gemma3": "Gemma 3 attends bidirectionally within each image's tokens",
    "gemma3n": "Gemma 3n attends bidirectionally within each image's tokens",
    "paligemma": "PaliGemma attends bidirectionally over the image and prefix (token_type_ids)",
}
_SUPPORTED_LAYER_TYPES = {"full_attention", "sliding_attention"}


def refusal_reason(hf_config) -> str | None:
    """Why ``hf_config`` cannot run through the Transformers backend, or None if it can."""
    model_type = hf_config.model_type
    text = hf_config.get_text_config()
    if getattr(hf_config, "is_encoder_decoder", False):
        return f"{model_type} is an encoder-decoder model; mmcore runs decoder-only LMs"
    if model_type in _BIDIRECTIONAL_IMAGE_SPANS:
        return (
            f"{_BIDIRECTIONAL_IMAGE_SPANS[model_type]}, an attention pattern mmcore's causal "
            "paged attention cannot express"
        )
    if getattr(text, "use_bidirectional_attention", False) or not getattr(text, "is_causal", True):
        return f"{model_type}'s language model is not causal"
    if getattr(text, "attn_logit_softcapping", None):
        return f"{model_type} soft-caps attention logits, which mmcore's attention does not"
    if getattr(text, "cross_attention_layers", None):
        return f"{model_type} cross-attends to image states, which mmcore's KV cache does not hold"
    layer_types = set(getattr(text, "layer_types", None) or ())
    if layer_types - _SUPPORTED_LAYER_TYPES:
        return (
            f"{model_type} has layers of type {sorted(layer_types - _SUPPORTED_LAYER_TYPES)}; "
            f"mmcore's paged attention runs {sorted(_SUPPORTED_LAYER_TYPES)}"
        )
    return None


def check_supported(hf_config) -> None:
    """Raise ValueError naming the model type and the reason when it cannot run."""
    reason = refusal_reason(hf_config)
    if reason is not None:
        raise ValueError(f"model type {hf_config.model_type!r} cannot run on mmcore: {reason}")
