"""Request plumbing of sampling parameters that need the tokenizer or the model: token-id range
checks, bad-word tokenization, stop ids for ``min_tokens`` and prompt truncation."""

from __future__ import annotations

import dataclasses

import numpy as np

from mmcore import _core
from mmcore.engine.inputs import ProcessedPrompt
from mmcore.sampling_params import SamplingParams


def check_token_ids(params: SamplingParams, vocab_size: int) -> None:
    """Raise ValueError when ``logit_bias`` or ``allowed_token_ids`` name a token outside the
    model's vocabulary."""
    for name, ids in (
        ("logit_bias", list(params.logit_bias or {})),
        ("allowed_token_ids", params.allowed_token_ids or []),
        ("stop_token_ids", params.stop_token_ids or []),
    ):
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(
                f"{name} has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}"
            )


def tokenize_bad_words(tokenizer, words: list[str] | None, vocab_size: int) -> list[list[int]]:
    """Each bad word as token ids, alone and after a space (as it appears mid-text), as vLLM
    does; variants that tokenize the same are kept once."""
    variants: list[list[int]] = []
    for word in words or []:
        for text in (word.lstrip(), " " + word.lstrip()):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if ids and ids not in variants:
                if any(not 0 <= t < vocab_size for t in ids):
                    raise ValueError(f"bad_words entry {word!r} tokenizes outside the vocabulary")
                variants.append(ids)
    return variants


def min_tokens_stop_ids(params: SamplingParams, eos_token_ids: list[int]) -> list[int]:
    """Tokens that would end the completion, masked until ``min_tokens`` are generated."""
    if params.min_tokens == 0:
        return []
    return list(params.stop_token_ids or []) + ([] if params.ignore_eos else list(eos_token_ids))


def truncate_prompt(
    processed: ProcessedPrompt, limit: int | None, max_model_len: int
) -> ProcessedPrompt:
    """Keep the last ``limit`` prompt tokens (``-1``: ``max_model_len - 1``), as vLLM's
    ``truncate_prompt_tokens`` does.

    Raises:
        ValueError: the cut would fall inside (or before) a multimodal item's placeholder range.
    """
    if limit is None:
        return processed
    keep = max_model_len - 1 if limit == -1 else limit
    num = len(processed.token_ids)
    if num <= keep:
        return processed
    cut = num - keep
    features = []
    for f in processed.features:
        if f.offset < cut:
            raise ValueError(
                f"truncate_prompt_tokens={limit} would cut the prompt's {_core.modality_name(f.modality)} "
                f"item at tokens [{f.offset}, {f.offset + f.length}); keep at least {num - f.offset} tokens"
            )
        mask = f.embed_mask
        features.append(
            _core.MMFeature(
                f.modality,
                f.identifier,
                f.offset - cut,
                f.length,
                f.num_embeds,
                None if mask is None or len(mask) == 0 else np.asarray(mask),
            )
        )
    return dataclasses.replace(
        processed, token_ids=np.ascontiguousarray(processed.token_ids[cut:]), features=features
    )
