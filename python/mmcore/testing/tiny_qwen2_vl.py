"""Tiny, seeded Qwen2-VL / Qwen2.5-VL checkpoints built offline for tests and benches.

The folder holds what a published checkpoint holds: config, safetensors, tokenizer with Qwen's
vision special tokens, ``preprocessor_config.json`` (the image processor), a
``video_preprocessor_config.json`` and a chat template. transformers' combined
``Qwen2VLProcessor`` needs torchvision for its video processor, so only the image processor is
saved through transformers; the video settings are written as JSON.
"""

from __future__ import annotations

import json
import os

import torch

from mmcore.testing.tiny_checkpoints import LM_HEAD_SCALE

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *VISION_TOKENS]
PATCH, MERGE, TEMPORAL = 4, 2, 2
FACTOR = PATCH * MERGE  # pixels per merged patch side
IMAGE_PIXELS = {"min_pixels": 4 * FACTOR**2, "max_pixels": 64 * FACTOR**2}
VIDEO_PIXELS = {"min_pixels": 4 * FACTOR**2, "max_pixels": 16 * FACTOR**2}

_CORPUS = [
    "A photo of an astronaut standing next to a flag on the moon.",
    "The cat sleeps on a warm blanket while the coffee cools on the table.",
    "What is shown in this video? A rocket lifts off into a clear blue sky.",
    "Describe the picture in detail, including colors, shapes and people.",
    "system user assistant You are a helpful assistant.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: , . ! ? ; ' \" ( ) - _",
]

# Qwen2-VL's ChatML layout; media parts become <|vision_start|><|*_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
)


def build_qwen_tokenizer():
    """A small byte-level BPE with Qwen2-VL's special tokens (each a single id)."""
    from transformers import PreTrainedTokenizerFast

    from mmcore.testing.bpe import train_byte_bpe

    tok = train_byte_bpe(_CORPUS, SPECIAL_TOKENS, 300)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def _vision_config(variant: str, out_hidden: int) -> dict:
    common = dict(
        depth=3,
        num_heads=2,
        in_channels=3,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        temporal_patch_size=TEMPORAL,
    )
    if variant == "qwen2_vl":
        return dict(
            common, embed_dim=32, mlp_ratio=2, hidden_size=out_hidden, hidden_act="quick_gelu"
        )
    return dict(
        common,
        hidden_size=32,
        intermediate_size=48,
        out_hidden_size=out_hidden,
        hidden_act="silu",
        window_size=2 * FACTOR,  # windows of 2 x 2 merged patches
        fullatt_block_indexes=[1],
        tokens_per_second=2,
    )


def build_tiny_qwen2_vl(
    path: str | os.PathLike,
    seed: int = 0,
    *,
    variant: str = "qwen2_vl",
    tie_word_embeddings: bool = False,
    text_overrides: dict | None = None,
) -> str:
    """Write a tiny Qwen2-VL (``variant="qwen2_vl"``) or Qwen2.5-VL (``"qwen2_5_vl"``) checkpoint.

    Vision: 4 px patches, 2x2 merge, temporal patch 2, 3 blocks (2.5: windows of 2x2 merged
    patches, block 1 full attention). LM: Qwen2, 2 layers, GQA 4/2, head dim 16, M-RoPE
    sections [2, 3, 3]. Images are resized to 4..64 merged patches, video frames to 4..16.

    Args:
        path: folder to write (created if missing).
        seed: torch seed of the random weights.
        variant: ``"qwen2_vl"`` or ``"qwen2_5_vl"``.
        tie_word_embeddings: share the embedding matrix with the LM head.
        text_overrides: LM config values replacing the tiny defaults.

    Returns:
        ``str(path)``.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    if variant not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"variant must be 'qwen2_vl' or 'qwen2_5_vl', got {variant!r}")
    path = str(path)
    os.makedirs(path, exist_ok=True)
    tok = build_qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    text = dict(
        _TEXT,
        vocab_size=len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **(text_overrides or {}),
    )
    config_cls, model_cls = (
        (Qwen2VLConfig, Qwen2VLForConditionalGeneration)
        if variant == "qwen2_vl"
        else (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration)
    )
    config = config_cls(
        text_config=text,
        vision_config=_vision_config(variant, text["hidden_size"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL, **IMAGE_PIXELS
    )
    image_processor.save_pretrained(path)
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {
            "shortest_edge": VIDEO_PIXELS["min_pixels"],
            "longest_edge": VIDEO_PIXELS["max_pixels"],
        },
        "patch_size": PATCH,
        "merge_size": MERGE,
        "temporal_patch_size": TEMPORAL,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
        "fps": 2.0,
        "cap_pixels_per_frame": False,
    }
    with open(os.path.join(path, "video_preprocessor_config.json"), "w") as f:
        json.dump(video, f, indent=2)
    with open(os.path.join(path, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)
    return path
