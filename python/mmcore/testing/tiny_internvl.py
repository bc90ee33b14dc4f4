"""Tiny, seeded InternVL checkpoints (HF format, ``model_type`` ``internvl``) built offline.

The folder holds what a published ``OpenGVLab/InternVL3-*-hf`` checkpoint holds: config,
safetensors, a tokenizer with InternVL's ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` and ``<video>``
tokens, ``preprocessor_config.json`` (HF's GotOcr2 image processor: tile size, 1..6 tiles),
``video_preprocessor_config.json`` and ``processor_config.json`` written as JSON (HF's video
processor needs torchvision), and a ChatML template rendering media parts as InternVL's does.
"""

from __future__ import annotations

import json
import os

import torch

from mmcore.testing.configs import INTERNVL_CHAT_TEMPLATE
from mmcore.testing.tiny_checkpoints import LM_HEAD_SCALE

IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *IMAGE_TOKENS.values()]
TILE, PATCH, MAX_TILES = 32, 4, 6
TOKENS_PER_TILE = (TILE // PATCH // 2) ** 2  # pixel shuffle 0.5
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

_CORPUS = [
    "A photo of an astronaut standing next to a flag on the moon.",
    "The cat sleeps on a warm blanket while the coffee cools on the table.",
    "Frame1: Frame2: Frame3: Frame4: Frame5: Frame6: Frame7: Frame8: what happens in the video?",
    "Describe the picture in detail, including colors, shapes and people.",
    "system user assistant You are a helpful assistant.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: , . ! ? ; ' \" ( ) - _",
]

CHAT_TEMPLATE = INTERNVL_CHAT_TEMPLATE


def build_internvl_tokenizer():
    """A small byte-level BPE with InternVL's special tokens (each a single id)."""
    from transformers import PreTrainedTokenizerFast

    from mmcore.testing.bpe import train_byte_bpe

    tok = train_byte_bpe(_CORPUS, SPECIAL_TOKENS, 300)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(IMAGE_TOKENS),
    )


def tiny_internvl_config(
    vocab_size: int,
    token_ids: dict,
    feature_layer: int = -1,
    text_overrides: dict | None = None,
    **vision_overrides,
):
    """An ``InternVLConfig``: InternViT (32 px tiles, 4 px patches, 2 layers, width 32) and a
    Qwen2 LM (2 layers, GQA 4/2, head dim 16)."""
    from transformers import InternVLConfig

    vision = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=TILE,
        patch_size=PATCH,
        use_qk_norm=True,
        norm_type="rms_norm",
        use_mean_pooling=False,
        layer_scale_init_value=0.5,
        attention_bias=True,
    )
    vision.update(vision_overrides)
    text = dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        vocab_size=vocab_size,
        bos_token_id=None,
        eos_token_id=token_ids["eos"],
        pad_token_id=token_ids["pad"],
        tie_word_embeddings=False,
    )
    text.update(text_overrides or {})
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=token_ids["<IMG_CONTEXT>"],
        image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=0.5,
        vision_feature_layer=feature_layer,
        tie_word_embeddings=False,
        eos_token_id=token_ids["eos"],
        pad_token_id=token_ids["pad"],
    )


def _randomize_vision(model, seed: int) -> None:
    """HF initialises class token, positions and layer scale to constants: make them random so
    a parity test can tell them apart."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.model.vision_tower.named_parameters():
            if name.endswith(("cls_token", "position_embeddings", "lambda_1", "lambda_2")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            elif name.endswith("norm.weight") or ".layernorm" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)


def build_tiny_internvl(
    path: str | os.PathLike,
    seed: int = 0,
    feature_layer: int = -1,
    text_overrides: dict | None = None,
    **vision_overrides,
) -> str:
    """Write a tiny InternVL checkpoint (see :func:`tiny_internvl_config`).

    Args:
        path: folder to write (created if missing).
        seed: torch seed of the random weights.
        feature_layer: ``vision_feature_layer`` (-1: the tower's last hidden state).
        text_overrides: Qwen2 config values replacing the tiny defaults.
        vision_overrides: InternViT config values replacing the tiny defaults (e.g.
            ``use_qk_norm=False, norm_type="layer_norm"`` for InternViT-300M's layout).

    Returns:
        ``str(path)``.
    """
    from transformers import InternVLForConditionalGeneration
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    path = str(path)
    os.makedirs(path, exist_ok=True)
    tok = build_internvl_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in IMAGE_TOKENS.values()}
    ids.update(eos=tok.eos_token_id, pad=tok.pad_token_id)
    config = tiny_internvl_config(len(tok), ids, feature_layer, text_overrides, **vision_overrides)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    _randomize_vision(model, seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE},
        crop_to_patches=False,  # InternVLProcessor turns tiling on, as for the released ones
        min_patches=1,
        max_patches=MAX_TILES,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    image_processor.save_pretrained(path)
    video = {
        "video_processor_type": "InternVLVideoProcessor",
        "size": {"height": TILE, "width": TILE},
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 3,
        "initial_shift": True,
        "do_sample_frames": False,
    }
    files = {
        "video_preprocessor_config.json": video,
        "processor_config.json": {
            "processor_class": "InternVLProcessor",
            "image_seq_length": TOKENS_PER_TILE,
        },
    }
    for name, content in files.items():
        with open(os.path.join(path, name), "w") as f:
            json.dump(content, f, indent=2)
    with open(os.path.join(path, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)
    return path
