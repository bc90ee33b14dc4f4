"""Weightless InternVL3 checkpoint folders of the real architectures (``load_format="dummy"``).

The tokenizer has the released id layout where it matters: a byte-level BPE padded to 151,643
tokens, Qwen2.5's 22 special tokens (``<|endoftext|>`` 151643 ... 151664), then InternVL's
``<img>`` 151665, ``</img>`` 151666, ``<IMG_CONTEXT>`` 151667 and its box/ref tokens (151674
rows in the embedding), then ``<video>`` (a placeholder the processor always expands). The
image processor config carries 448 px tiles and 1..12 tiles, as released.
"""

from __future__ import annotations

import json
import os

from mmcore.testing.configs import CHAT_TEMPLATES, REAL_CONFIGS

# Qwen2.5's special tokens after the 14 Qwen2-VL ones the padded Qwen tokenizer already has.
_QWEN2_5_EXTRA = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
_INTERNVL = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>"]
_INTERNVL += ["<box>", "</box>", "<video>"]
_ROLES = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def build_internvl_padded_tokenizer():
    """Qwen's padded BPE with InternVL3's special tokens at their released ids."""
    from transformers import PreTrainedTokenizerFast

    from mmcore.testing.dummy_qwen2_vl import build_qwen_padded_tokenizer

    backend = build_qwen_padded_tokenizer().backend_tokenizer
    backend.add_special_tokens(_QWEN2_5_EXTRA + _INTERNVL)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=dict(_ROLES),
    )


def write_internvl_checkpoint(name: str, path: str | os.PathLike) -> str:
    """Write the weightless folder of InternVL architecture ``name`` (a ``REAL_CONFIGS`` key).

    Returns:
        ``str(path)``, loadable with ``Engine(path, load_format="dummy")``.
    """
    from transformers import AutoConfig
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        GotOcr2ImageProcessorPil,
    )

    path = str(path)
    os.makedirs(path, exist_ok=True)
    fields = dict(REAL_CONFIGS[name])
    model_type = fields.pop("model_type")
    tokenizer = build_internvl_padded_tokenizer()
    if tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") != fields["image_token_id"]:
        raise RuntimeError("the padded tokenizer does not put <IMG_CONTEXT> at its released id")
    AutoConfig.for_model(model_type, **fields).save_pretrained(path)
    tokenizer.save_pretrained(path)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    tile = {"height": 448, "width": 448}
    GotOcr2ImageProcessorPil(
        size=tile, crop_to_patches=False, min_patches=1, max_patches=12, image_mean=mean,
        image_std=std,
    ).save_pretrained(path)  # fmt: skip
    files = {
        "video_preprocessor_config.json": {
            "video_processor_type": "InternVLVideoProcessor",
            "size": tile,
            "image_mean": mean,
            "image_std": std,
            "resample": 3,
            "initial_shift": True,
        },
        "processor_config.json": {
            "processor_class": "InternVLProcessor",
            "image_seq_length": fields["image_seq_length"],
        },
    }
    for file_name, content in files.items():
        with open(os.path.join(path, file_name), "w") as f:
            json.dump(content, f, indent=2)
    with open(os.path.join(path, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATES[name])
    return path
