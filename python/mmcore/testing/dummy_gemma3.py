"""Weightless Gemma 3 checkpoint folders of the released architectures (for benchmarks).

The configs are the published ``google/gemma-3-{12b,27b}-it`` ``config.json`` values. The
tokenizer is the tiny one of :mod:`mmcore.testing.tiny_gemma3` (prompts are given as token ids;
the vocabulary size, which sets the embedding and head cost, stays the real 262,208); the image
token ids in the config point at its image tokens. Load with ``load_format="dummy"``.
"""

from __future__ import annotations

import os

_VISION = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 896,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
    "hidden_act": "gelu_pytorch_tanh",
}
_TEXT_COMMON = {
    "model_type": "gemma3_text",
    "head_dim": 256,
    "sliding_window": 1024,
    "sliding_window_pattern": 6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "max_position_embeddings": 131072,
    "vocab_size": 262208,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
}
#: name -> text config of the released checkpoint
GEMMA3_CONFIGS: dict[str, dict] = {
    "gemma-3-12b-it": {
        **_TEXT_COMMON,
        "hidden_size": 3840,
        "intermediate_size": 15360,
        "num_hidden_layers": 48,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "query_pre_attn_scalar": 256,
    },
    "gemma-3-27b-it": {
        **_TEXT_COMMON,
        "head_dim": 128,
        "hidden_size": 5376,
        "intermediate_size": 21504,
        "num_hidden_layers": 62,
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "query_pre_attn_scalar": 168,
    },
}


def write_gemma3_checkpoint(name: str, path: str | os.PathLike) -> str:
    """Write the weightless checkpoint folder of Gemma 3 architecture ``name``.

    Args:
        name: a key of :data:`GEMMA3_CONFIGS`.
        path: folder to write (created if missing).

    Returns:
        ``str(path)``, loadable with ``Engine(path, load_format="dummy")``.

    Raises:
        ValueError: unknown ``name``.
    """
    from transformers import Gemma3Config, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from mmcore.testing.tiny_gemma3 import (
        BOI,
        CHAT_TEMPLATE,
        EOI,
        IMAGE_SOFT,
        build_gemma3_tokenizer,
    )

    if name not in GEMMA3_CONFIGS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(GEMMA3_CONFIGS)}")
    path = str(path)
    os.makedirs(path, exist_ok=True)
    tok = build_gemma3_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in (BOI, EOI, IMAGE_SOFT)}
    config = Gemma3Config(
        text_config=dict(GEMMA3_CONFIGS[name], pad_token_id=tok.pad_token_id),
        vision_config=dict(_VISION),
        mm_tokens_per_image=256,
        boi_token_index=ids[BOI],
        eoi_token_index=ids[EOI],
        image_token_index=ids[IMAGE_SOFT],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        dtype="bfloat16",
    )
    config.save_pretrained(path)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": 896, "width": 896},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pan_and_scan=False,
        pan_and_scan_min_crop_size=256,
        pan_and_scan_max_num_crops=4,
        pan_and_scan_min_ratio_to_activate=1.2,
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=256,
    )
    processor.save_pretrained(path)
    return path
