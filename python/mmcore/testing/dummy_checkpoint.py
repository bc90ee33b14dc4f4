"""Writes weightless checkpoint folders of real architectures for ``load_format="dummy"``.

The folder has what the engine and HF read except weights: config.json, a tokenizer with the
real vocabulary size (a byte-level BPE trained offline, padded with unreachable filler tokens),
the image processor and processor configs with the real image sizes, and the chat template.
``Engine(path, load_format="dummy")`` then builds the model directly on the GPU with random
weights.
"""

from __future__ import annotations

import json
import os

from mmcore.testing.configs import CHAT_TEMPLATES, REAL_CONFIGS
from mmcore.testing.tiny_checkpoints import _CORPUS

_BASE_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in the Llama / Mistral tokenizers
_ADDED_SPECIALS = ["<image>", "<pad>"]  # ids 32000, 32001 as in the LLaVA-HF tokenizers
_BASE_VOCAB = 32000


def padded_bpe(base_vocab: int, base_specials: list[str]):
    """A byte-level BPE trained offline on a small corpus, padded to exactly ``base_vocab``
    tokens with unreachable filler tokens; ``base_specials`` take the first ids.

    Args:
        base_vocab: size of the padded vocabulary.
        base_specials: special tokens among the first ids (``<unk>`` becomes the unk token).

    Returns:
        A ``tokenizers.Tokenizer`` (add the family's special tokens after it).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    unk = "<unk>" if "<unk>" in base_specials else None
    trained = Tokenizer(models.BPE(unk_token=unk))
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=base_specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trained.train_from_iterator(_CORPUS, trainer=trainer)
    state = json.loads(trained.to_str())["model"]
    vocab = dict(state["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    if len(vocab) > base_vocab:
        raise ValueError(f"base_vocab={base_vocab} is below the trained {len(vocab)} tokens")
    # Filler tokens no merge produces: they only give the embedding table its real size.
    for i in range(base_vocab - len(vocab)):
        vocab[f"fill{i}"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(base_specials)
    return tok


def build_padded_tokenizer(base_vocab: int = _BASE_VOCAB):
    """A byte-level BPE of exactly ``base_vocab`` tokens, then ``<image>`` and ``<pad>``.

    Args:
        base_vocab: size before the added special tokens (32000 for Llama-2 / Mistral).

    Returns:
        A ``PreTrainedTokenizerFast`` of ``base_vocab + 2`` tokens.
    """
    from transformers import PreTrainedTokenizerFast

    tok = padded_bpe(base_vocab, _BASE_SPECIALS)
    tok.add_special_tokens(_ADDED_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def _hf_config(config: dict):
    from transformers import AutoConfig

    fields = dict(config)
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def _processor(config: dict, tokenizer, chat_template: str):
    from transformers import (
        CLIPImageProcessor,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    vision = config["vision_config"]
    size = vision["image_size"]
    common = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    kwargs = dict(
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy=config["vision_feature_select_strategy"],
        num_additional_image_tokens=1,
        chat_template=chat_template,
        image_token="<image>",
    )
    if config["model_type"] == "llava":
        return LlavaProcessor(image_processor=CLIPImageProcessor(**common), **kwargs)
    pinpoints = config["image_grid_pinpoints"]
    image_processor = LlavaNextImageProcessor(**common, image_grid_pinpoints=pinpoints)
    return LlavaNextProcessor(image_processor=image_processor, **kwargs)


def write_dummy_checkpoint(
    name: str, path: str | os.PathLike, overrides: dict | None = None
) -> str:
    """Write the weightless checkpoint folder of real architecture ``name``.

    Args:
        name: a key of :data:`mmcore.testing.configs.REAL_CONFIGS`, e.g. ``"llava-1.5-7b"`` or
            ``"qwen2.5-vl-7b-instruct"``.
        path: folder to write (created if missing).
        overrides: config.json fields replacing the released ones, nested dicts merged (a
            shrunk model for CPU smoke runs); Idefics3 only.

    Returns:
        ``str(path)``, loadable with ``Engine(path, load_format="dummy")``.

    Raises:
        ValueError: unknown ``name``, or ``overrides`` for another family.
    """
    if name not in REAL_CONFIGS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(REAL_CONFIGS)}")
    model_type = REAL_CONFIGS[name]["model_type"]
    if overrides is not None and model_type != "idefics3":
        raise ValueError(f"config overrides are supported for idefics3 only, not {name!r}")
    if model_type == "idefics3":
        from mmcore.testing.dummy_idefics3 import write_idefics3_checkpoint

        return write_idefics3_checkpoint(name, path, overrides)
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        from mmcore.testing.dummy_qwen2_vl import write_qwen2_vl_checkpoint

        return write_qwen2_vl_checkpoint(name, path)
    if model_type == "internvl":
        from mmcore.testing.dummy_internvl import write_internvl_checkpoint

        return write_internvl_checkpoint(name, path)
    path = str(path)
    os.makedirs(path, exist_ok=True)
    config = REAL_CONFIGS[name]
    tokenizer = build_padded_tokenizer()
    if len(tokenizer) != config["image_token_index"] + len(_ADDED_SPECIALS):
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected 32002")
    _hf_config(config).save_pretrained(path)
    _processor(config, tokenizer, CHAT_TEMPLATES[name]).save_pretrained(path)
    return path
