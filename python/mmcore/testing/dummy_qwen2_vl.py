"""Weightless Qwen2-VL / Qwen2.5-VL checkpoint folders of the real architectures.

The tokenizer has the real vocabulary layout where it matters: Qwen's special tokens at their
published ids (``<|endoftext|>`` 151643 ... ``<|video_pad|>`` 151656), below them a byte-level
BPE padded with unreachable filler tokens. The image processor and video processor configs
carry the released pixel ranges; the chat template is Qwen's ChatML with vision parts.
"""

from __future__ import annotations

import json
import os

from mmcore.testing.configs import CHAT_TEMPLATES, QWEN2_VL_IMAGE_PIXELS, REAL_CONFIGS
from mmcore.testing.tiny_checkpoints import _CORPUS

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_BASE_VOCAB = 151643  # ids below the special tokens
# Released video processor settings (HF Qwen2VLVideoProcessor defaults).
VIDEO_PIXELS = (128 * 28 * 28, 768 * 28 * 28)


def build_qwen_padded_tokenizer():
    """Byte-level BPE padded to 151,643 tokens, then Qwen's 14 special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trained.train_from_iterator(_CORPUS, trainer=trainer)
    state = json.loads(trained.to_str())["model"]
    vocab = dict(state["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    for i in range(QWEN_BASE_VOCAB - len(vocab)):  # filler: gives the real id layout only
        vocab[f"fill{i}"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(QWEN_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def write_qwen2_vl_checkpoint(name: str, path: str | os.PathLike) -> str:
    """Write the weightless folder of Qwen architecture ``name`` (a ``REAL_CONFIGS`` key).

    Returns:
        ``str(path)``, loadable with ``Engine(path, load_format="dummy")``.
    """
    from transformers import AutoConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    path = str(path)
    os.makedirs(path, exist_ok=True)
    fields = dict(REAL_CONFIGS[name])
    model_type = fields.pop("model_type")
    tokenizer = build_qwen_padded_tokenizer()
    if tokenizer.convert_tokens_to_ids("<|video_pad|>") != fields["video_token_id"]:
        raise RuntimeError("the padded tokenizer does not put <|video_pad|> at its released id")
    AutoConfig.for_model(model_type, **fields).save_pretrained(path)
    tokenizer.save_pretrained(path)
    vision = fields["vision_config"]
    low, high = QWEN2_VL_IMAGE_PIXELS
    Qwen2VLImageProcessorPil(
        patch_size=vision["patch_size"],
        merge_size=vision["spatial_merge_size"],
        temporal_patch_size=vision["temporal_patch_size"],
        min_pixels=low,
        max_pixels=high,
    ).save_pretrained(path)
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": VIDEO_PIXELS[0], "longest_edge": VIDEO_PIXELS[1]},
        "patch_size": vision["patch_size"],
        "merge_size": vision["spatial_merge_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
        "max_frames": 768,
    }
    with open(os.path.join(path, "video_preprocessor_config.json"), "w") as f:
        json.dump(video, f, indent=2)
    with open(os.path.join(path, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATES[name])
    return path
