"""Tiny, seeded Hugging Face LLaVA / LLaVA-NeXT checkpoints built offline for tests and benches.

Each builder writes a complete checkpoint folder (config, model safetensors, tokenizer, image
processor, processor config with a chat template) that ``transformers`` and mmcore both load.
The recipe: a byte-level BPE trained on a few sentences,
``<image>`` as a special token, CLIP vision tower + Llama LM, LM head scaled so greedy decoding
is decisive.
"""

from __future__ import annotations

import os

import torch

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
LM_HEAD_SCALE = 20.0  # std-0.02 weights give near-flat logits; scaling makes greedy ties unlikely

_CORPUS = [
    "A photo of an astronaut standing next to a flag on the moon.",
    "The cat sleeps on a warm blanket while the coffee cools on the table.",
    "USER: What is shown in this image? ASSISTANT: A camera man on a field.",
    "Describe the picture in detail, including colors, shapes and people.",
    "The rocket lifts off into a clear blue sky, leaving a trail of smoke.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: , . ! ? ; ' \" ( ) - _",
]

# USER/ASSISTANT turns (LLaVA-1.5 style); content may be a string or a list of typed parts.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=32,
    hidden_act="quick_gelu",
)
_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def build_tokenizer():
    """Train a small byte-level BPE and wrap it as a ``PreTrainedTokenizerFast``.

    Returns:
        The tokenizer; ``<image>`` is a special token with its own id.
    """
    from transformers import PreTrainedTokenizerFast

    from mmcore.testing.bpe import train_byte_bpe

    tok = train_byte_bpe(_CORPUS, SPECIAL_TOKENS, 320, unk_token="<unk>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def _image_token_id(tok) -> int:
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id == tok.unk_token_id:
        raise RuntimeError("<image> was not added as a special token")
    return image_id


def _seeded_model(model_cls, config, seed: int):
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    return model


def build_tiny_llava(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str = "default",
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
) -> str:
    """Write a tiny LLaVA-1.5 checkpoint (CLIP 32px/8px patches + 2-layer Llama with GQA).

    Args:
        path: folder to write (created if missing).
        seed: torch seed of the random weights.
        vision_feature_layer: CLIP hidden state(s) the projector reads.
        vision_feature_select_strategy: ``"default"`` (drop CLS) or ``"full"``.
        text_overrides: LM config values replacing the tiny defaults (e.g. a wider
            ``hidden_size`` for head dim 64, which the CUDA attention kernels take).
        vision_overrides: vision tower config values replacing the tiny defaults.

    Returns:
        ``str(path)``.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    path = str(path)
    os.makedirs(path, exist_ok=True)
    tok = build_tokenizer()
    text_kwargs = {**_TEXT, **(text_overrides or {})}
    vision_kwargs = {**_VISION, **(vision_overrides or {})}
    size = vision_kwargs["image_size"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=vision_kwargs["patch_size"],
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    text = LlamaConfig(
        vocab_size=len(tok), **{"num_key_value_heads": 2, "rope_theta": 10000.0, **text_kwargs}
    )
    num_patches = (size // vision_kwargs["patch_size"]) ** 2
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_kwargs),
        text_config=text,
        image_token_index=_image_token_id(tok),
        image_seq_length=num_patches + (vision_feature_select_strategy == "full"),
        vision_feature_select_strategy=vision_feature_select_strategy,
        vision_feature_layer=vision_feature_layer,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    _seeded_model(LlavaForConditionalGeneration, config, seed).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_llava_next(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    text_model_type: str = "llama",
    sliding_window: int = 24,
    text_overrides: dict | None = None,
    vision_overrides: dict | None = None,
) -> str:
    """Write a tiny LLaVA-NeXT checkpoint (anyres over 32px tiles, MHA, 2 feature layers).

    Args:
        path: folder to write (created if missing).
        seed: torch seed of the random weights.
        text_model_type: ``"llama"`` (llama3 rope scaling) or ``"mistral"`` (default rope,
            sliding-window attention of ``sliding_window`` tokens, GQA).
        sliding_window: the Mistral window; shorter than test prompts so it takes effect.
        text_overrides: LM config values replacing the tiny defaults (e.g. a wider
            ``hidden_size`` for head dim 64, which the CUDA attention kernels take).
        vision_overrides: vision tower config values replacing the tiny defaults.

    Returns:
        ``str(path)``.
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    path = str(path)
    os.makedirs(path, exist_ok=True)
    tok = build_tokenizer()
    text_kwargs = {**_TEXT, **(text_overrides or {})}
    vision_kwargs = {**_VISION, **(vision_overrides or {})}
    size = vision_kwargs["image_size"]
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=vision_kwargs["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    rope = {
        "rope_type": "llama3",
        "rope_theta": 50000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    if text_model_type == "llama":
        text = LlamaConfig(
            vocab_size=len(tok), rope_parameters=rope, **{"num_key_value_heads": 4, **text_kwargs}
        )
    elif text_model_type == "mistral":
        text = MistralConfig(
            vocab_size=len(tok),
            sliding_window=sliding_window,
            **{"num_key_value_heads": 2, **text_kwargs},
        )
    else:
        raise ValueError(f"text_model_type must be 'llama' or 'mistral', got {text_model_type!r}")
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**vision_kwargs),
        text_config=text,
        image_token_index=_image_token_id(tok),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=[-3, -1],
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    _seeded_model(LlavaNextForConditionalGeneration, config, seed).save_pretrained(path)
    processor.save_pretrained(path)
    return path
