"""Checks of one request against the model it runs on (vocabulary, length limits).

``SamplingParams.validate`` checks what holds for any model; these checks need the model's
vocabulary size and length limit. Every failure is a ValueError naming the field, so the server
answers 400 and the value never reaches the C++ core, the sampler or a kernel.
"""

from __future__ import annotations

import numpy as np

from mmcore.sampling_params import SamplingParams

INT32_MAX = 2**31 - 1


def check_token_ids(name: str, token_ids: list[int], vocab_size: int) -> None:
    """Raise ValueError unless every entry of ``token_ids`` is an int in ``[0, vocab_size)``.

    Args:
        name: the field name used in the message.
        token_ids: the values to check.
        vocab_size: the model's vocabulary size.
    """
    for i, token in enumerate(token_ids):
        if isinstance(token, bool) or not isinstance(token, int):
            raise ValueError(f"{name}[{i}] must be an integer, got {type(token).__name__}")
        if not 0 <= token < vocab_size:
            raise ValueError(
                f"{name}[{i}] = {token} is not a token id of this model (valid: 0 to "
                f"{vocab_size - 1})"
            )


def check_params_for_model(params: SamplingParams, *, vocab_size: int, max_model_len: int) -> None:
    """Raise ValueError naming the first sampling value this model cannot serve.

    Args:
        params: the request's sampling parameters (already valid on their own).
        vocab_size: width of the model's logits.
        max_model_len: longest prompt + output.
    """
    check_token_ids("stop_token_ids", params.stop_token_ids, vocab_size)
    if params.top_k > vocab_size:
        raise ValueError(
            f"top_k = {params.top_k} exceeds the vocabulary size ({vocab_size}); use -1 or 0 "
            "to keep every token"
        )
    if params.logprobs is not None and params.logprobs > vocab_size:
        raise ValueError(f"logprobs = {params.logprobs} exceeds the vocabulary size ({vocab_size})")
    if params.min_tokens > max_model_len:
        raise ValueError(
            f"min_tokens = {params.min_tokens} exceeds max_model_len ({max_model_len})"
        )
    if params.max_tokens is not None and params.max_tokens > INT32_MAX:
        raise ValueError(f"max_tokens = {params.max_tokens} exceeds {INT32_MAX}")


def prompt_token_array(token_ids, vocab_size: int) -> np.ndarray:
    """``prompt_token_ids`` as a 1-D int32 array; ValueError for anything else.

    Args:
        token_ids: a list of ints (or an integer array) from the user or the tokenizer.
        vocab_size: the tokenizer's vocabulary size.

    Returns:
        The ids as int32, each in ``[0, vocab_size)``.
    """
    if isinstance(token_ids, (str, bytes, dict)):
        raise ValueError("prompt_token_ids must be a list of integers")
    try:
        values = np.asarray(token_ids)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"prompt_token_ids must be a list of integers ({exc})") from None
    # Floats, bools, strings and ints beyond int64 (object arrays) are all refused here.
    if values.size and values.dtype.kind not in "iu":
        raise ValueError("prompt_token_ids must hold only integers that are token ids")
    if values.ndim != 1 or values.size == 0:
        raise ValueError("prompt is empty" if values.size == 0 else "prompt_token_ids must be 1-D")
    if int(values.min()) < 0 or int(values.max()) >= vocab_size:
        raise ValueError(f"prompt_token_ids must be in [0, {vocab_size})")
    return values.astype(np.int32)
