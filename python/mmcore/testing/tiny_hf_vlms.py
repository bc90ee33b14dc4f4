"""Tiny, seeded checkpoints of VLM families mmcore has no native code for (Transformers backend).

Each builder writes a folder that ``AutoConfig`` / ``AutoProcessor`` /
``AutoModelForImageTextToText`` load offline: config, safetensors, a small byte-level BPE with
the family's special tokens, the family's PIL image processor (no torchvision here) and its
processor config. The LM head is scaled (``LM_HEAD_SCALE``) so greedy decoding is decisive.
"""

from __future__ import annotations

import os

import torch

from mmcore.testing.tiny_checkpoints import LM_HEAD_SCALE

_CORPUS = [
    "A photo of an astronaut standing next to a flag on the moon.",
    "The cat sleeps on a warm blanket while the coffee cools on the table.",
    "User: What is shown in this image? Assistant: A camera man on a field.",
    "Describe the picture in detail, including colors, shapes and people.",
    "The rocket lifts off into a clear blue sky, leaving a trail of smoke.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: , . ! ? ; ' \" ( ) - _ \n",
]
_BASE_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
# A small Llama-like LM shared by the families (GQA: 4 query heads, 2 KV heads).
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def build_tokenizer(extra_specials: list[str], image_token: str, named: dict | None = None):
    """A byte-level BPE whose ``extra_specials`` are single special tokens; ``named`` adds
    tokenizer attributes (e.g. ``boi_token``) processors read."""
    from transformers import PreTrainedTokenizerFast

    from mmcore.testing.bpe import train_byte_bpe

    tok = train_byte_bpe(_CORPUS, _BASE_SPECIALS + extra_specials, 340, unk_token="<unk>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": image_token, **(named or {})},
    )


def chat_template(image_text: str) -> str:
    """A User/Assistant template; image parts render as ``image_text``."""
    return (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'user' %}User: {% else %}Assistant: {% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{image_text}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        "\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    )


def _save(path, model_cls, config, processor, seed: int) -> str:
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def build_tiny_idefics3(path: str | os.PathLike, seed: int = 0) -> str:
    """Idefics3 / SmolVLM: image splitting into 32px tiles + a global tile, pixel shuffle 2."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    specials = ["<image>", "<fake_token_around_image>", "<global-img>"]
    specials += [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]
    tok = build_tokenizer(specials, "<image>")
    size = 32
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * size},
        max_image_size={"longest_edge": size},
        do_image_splitting=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=(size // 8 // 2) ** 2,
        chat_template=chat_template("<image>"),
    )
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=size,
            patch_size=8,
        ),
        text_config=dict(model_type="llama", vocab_size=len(tok), **TEXT),
        scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
    )
    return _save(path, Idefics3ForConditionalGeneration, config, processor, seed)


def build_tiny_aya_vision(path: str | os.PathLike, seed: int = 0) -> str:
    """Aya Vision: SigLIP + pixel shuffle, GotOcr2 tiling, Cohere2 LM (logit scale)."""
    from transformers import (
        AyaVisionConfig,
        AyaVisionForConditionalGeneration,
        AyaVisionProcessor,
        GotOcr2ImageProcessorPil,
    )

    specials = [
        "<image>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_PATCH|>",
        "<|IMG_LINE_BREAK|>",
        "TILE",
        "TILE_GLOBAL",
    ]
    tok = build_tokenizer(specials, "<image>")
    size = 32
    processor = AyaVisionProcessor(
        image_processor=GotOcr2ImageProcessorPil(
            size={"height": size, "width": size}, crop_to_patches=True, max_patches=4
        ),
        tokenizer=tok,
        patch_size=8,
        img_size=size,
        downsample_factor=2,
        chat_template=chat_template("<image>"),
    )
    text = dict(TEXT, model_type="cohere2", vocab_size=len(tok), logit_scale=0.5)
    text["layer_types"] = ["sliding_attention", "full_attention"]
    text["sliding_window"] = 8
    config = AyaVisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=size,
            patch_size=8,
        ),
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return _save(path, AyaVisionForConditionalGeneration, config, processor, seed)


def build_tiny_deepseek_vl(path: str | os.PathLike, seed: int = 0) -> str:
    """DeepSeek-VL: SigLIP 32px / 8px patches (16 image tokens), Llama LM."""
    from transformers import (
        DeepseekVLConfig,
        DeepseekVLForConditionalGeneration,
        DeepseekVLImageProcessorPil,
        DeepseekVLProcessor,
    )

    tok = build_tokenizer(["<image_placeholder>"], "<image_placeholder>")
    size = 32
    processor = DeepseekVLProcessor(
        image_processor=DeepseekVLImageProcessorPil(size={"height": size, "width": size}),
        tokenizer=tok,
        num_image_tokens=(size // 8) ** 2,
        chat_template=chat_template("<image_placeholder>"),
    )
    config = DeepseekVLConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=size,
            patch_size=8,
        ),
        text_config=dict(model_type="llama", vocab_size=len(tok), **TEXT),
        image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=False,
    )
    return _save(path, DeepseekVLForConditionalGeneration, config, processor, seed)


def build_tiny_vipllava(path: str | os.PathLike, seed: int = 0) -> str:
    """VipLLaVA: CLIP 32px / 8px patches, features of several tower layers, Llama LM."""
    from transformers import (
        CLIPImageProcessorPil,
        LlavaProcessor,
        VipLlavaConfig,
        VipLlavaForConditionalGeneration,
    )

    tok = build_tokenizer(["<image>"], "<image>")
    size = 32
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template("<image>"),
    )
    config = VipLlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=size,
            patch_size=8,
            projection_dim=32,
        ),
        text_config=dict(model_type="llama", vocab_size=len(tok), **TEXT),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layers=[-2, -1],
        image_seq_length=(size // 8) ** 2,
    )
    return _save(path, VipLlavaForConditionalGeneration, config, processor, seed)


def build_tiny_janus(path: str | os.PathLike, seed: int = 0) -> str:
    """Janus (understanding path): SigLIP-like 32px / 8px tower, <begin_of_image> 16 image
    tokens <end_of_image>, Llama LM; the image-generation VQ head is tiny and unused."""
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessorPil,
        JanusProcessor,
    )

    specials = ["<image_placeholder>", "<begin_of_image>", "<end_of_image>"]
    named = {"boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"}
    tok = build_tokenizer(specials, "<image_placeholder>", named)
    size, tokens = 32, 16
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(size={"height": size, "width": size}),
        tokenizer=tok,
        num_image_tokens=tokens,
        chat_template=chat_template("<image_placeholder>"),
    )
    config = JanusConfig(
        text_config=dict(model_type="llama", vocab_size=len(tok), **TEXT),
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=size,
            patch_size=8,
            projection_dim=64,
            depth=1,
            num_image_tokens=tokens,
        ),
        vq_config=dict(
            num_embeddings=32,
            base_channels=32,
            latent_channels=32,
            channel_multiplier=[1, 1],
            num_res_blocks=1,
            projection_dim=64,
            image_token_embed_dim=64,
            num_patches=4,
        ),
        image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=False,
    )
    return _save(path, JanusForConditionalGeneration, config, processor, seed)
