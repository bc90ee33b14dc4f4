"""Weightless Idefics3 checkpoint folders of the released architecture (``load_format="dummy"``).

``HuggingFaceM4/Idefics3-8B-Llama3``: a SigLIP tower (364 px tiles, patch 14), a pixel-shuffle
connector (scale factor 2: 169 embeddings per tile) and Llama-3-8B. The tokenizer has the
released id layout where it matters: a byte-level BPE padded to 128,000 tokens, Llama 3's 256
special tokens (``<|begin_of_text|>`` 128000 ... ``<|reserved_special_token_250|>`` 128255),
then ``<fake_token_around_image>`` 128256, ``<image>`` 128257 and ``<end_of_utterance>`` 128258.
As in the released tokenizer, ``<global-img>`` and ``<row_r_col_c>`` are plain text (several
BPE pieces), not added tokens. The image processor is the released one: the longest edge
resized to 4 x 364 px, split into 364 px tiles plus a global image.
"""

from __future__ import annotations

import copy
import os

from mmcore.testing.configs import CHAT_TEMPLATES, REAL_CONFIGS

LLAMA3_BASE_VOCAB = 128000  # ids below Llama 3's special tokens
IDEFICS3_ADDED = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
TILE = 364  # vision tile side in pixels (max_image_size)


def _llama3_specials() -> list[str]:
    """Llama 3's 256 special tokens in id order (128000 ... 128255)."""
    named = {
        0: "<|begin_of_text|>",
        1: "<|end_of_text|>",
        6: "<|start_header_id|>",
        7: "<|end_header_id|>",
        9: "<|eot_id|>",
    }
    tokens, reserved = [], 0
    for i in range(256):
        if i in named:
            tokens.append(named[i])
        else:
            tokens.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return tokens


def build_idefics3_padded_tokenizer():
    """Byte-level BPE padded to 128,000 tokens, Llama 3's specials, then Idefics3's three."""
    from transformers import PreTrainedTokenizerFast

    from mmcore.testing.dummy_checkpoint import padded_bpe

    backend = padded_bpe(LLAMA3_BASE_VOCAB, [])
    backend.add_special_tokens(_llama3_specials() + IDEFICS3_ADDED)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|reserved_special_token_0|>",  # id 128002, the released pad_token_id
        extra_special_tokens={"image_token": "<image>"},
    )


def _merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied; nested dicts (text_config ...) merge key by key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def write_idefics3_checkpoint(
    name: str, path: str | os.PathLike, overrides: dict | None = None
) -> str:
    """Write the weightless folder of Idefics3 architecture ``name`` (a ``REAL_CONFIGS`` key).

    Args:
        name: e.g. ``"idefics3-8b"``.
        path: folder to write (created if missing).
        overrides: config.json fields replacing the released ones, nested dicts merged (e.g.
            ``{"text_config": {"num_hidden_layers": 2}}`` for a CPU smoke run); the tokenizer
            and the processor stay the released ones.

    Returns:
        ``str(path)``, loadable with ``Engine(path, load_format="dummy")``.
    """
    from transformers import AutoConfig, Idefics3ImageProcessorPil, Idefics3Processor

    path = str(path)
    os.makedirs(path, exist_ok=True)
    fields = _merged(REAL_CONFIGS[name], overrides or {})
    model_type = fields.pop("model_type")
    tokenizer = build_idefics3_padded_tokenizer()
    if tokenizer.convert_tokens_to_ids("<image>") != fields["image_token_id"]:
        raise RuntimeError("the padded tokenizer does not put <image> at its released id")
    if len(tokenizer) != fields["text_config"]["vocab_size"]:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, not the config's vocab_size")
    config = AutoConfig.for_model(model_type, **fields)
    config.save_pretrained(path)
    vision = config.vision_config
    image_seq_len = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 4 * TILE},
        max_image_size={"longest_edge": TILE},
        do_image_splitting=True,
        resample=1,  # LANCZOS
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=CHAT_TEMPLATES[name],
    )
    processor.save_pretrained(path)
    return path
