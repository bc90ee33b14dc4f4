"""What the driver sends a tensor-parallel worker about a new request, and which sampling
features need the driver's host between forward and sample (refused with several ranks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmcore.engine.inputs import MMItem
from mmcore.sampling_params import SamplingParams


@dataclass(frozen=True)
class RemoteRequest:
    """A new request's inputs, picklable; each worker builds its sampling state from them.

    Attributes:
        items: its multimodal items.
        params: its sampling parameters.
        generator_seed: seed of its random draws (the generator is made on the rank's device).
        prompt_token_ids: its prompt (repetition penalty counts).
        bad_words_ids: its bad words as token ids (single tokens only, see
            :func:`refuse_host_sampling`).
        stop_ids: tokens masked until ``min_tokens`` were generated.
    """

    items: list[MMItem]
    params: SamplingParams
    generator_seed: int
    prompt_token_ids: np.ndarray
    bad_words_ids: list[list[int]]
    stop_ids: list[int]


def refuse_host_sampling(params: SamplingParams, bad_words_ids: list[list[int]]) -> None:
    """Refuse what needs host work between a step's forward and its sampling on the driver.

    With several ranks the workers sample right after their forward, so structured outputs
    (grammar bitmasks), multi-token bad words and prompt log-probabilities are not available.

    Raises:
        ValueError: naming the feature.
    """
    if params.structured_outputs is not None:
        feature = "structured outputs (guided decoding)"
    elif any(len(word) > 1 for word in bad_words_ids):
        feature = "bad_words of several tokens"
    elif params.prompt_logprobs is not None:
        feature = "prompt_logprobs"
    else:
        return
    raise ValueError(
        f"{feature} is not supported with tensor_parallel_size > 1 yet (see docs/distributed.md)"
    )


def to_request_state(runner, request: RemoteRequest):
    """The runner's state of ``request`` on this rank (sampling counts on its device)."""
    from mmcore.engine.runner import RequestState

    generator = torch.Generator(device=runner.device).manual_seed(request.generator_seed)
    sampling = runner.new_sampling(
        request.params,
        generator,
        request.prompt_token_ids,
        request.bad_words_ids,
        request.stop_ids,
    )
    return RequestState(request.items, sampling)
