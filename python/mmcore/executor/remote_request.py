"""What the driver sends a tensor-parallel worker about a new request, and what it keeps of the
request's sampling (its host masks travel with each step)."""

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
        prompt_token_ids: its prompt (repetition penalty counts, prompt log-probabilities).
        bad_words_ids: its bad words as token ids (the workers ban single tokens; bans of
            multi-token words come with each step from the driver, see :class:`DriverRow`).
        stop_ids: tokens masked until ``min_tokens`` were generated.
        keep_prompt: compute its prompt log-probabilities (the first completion of a request
            asking for ``prompt_logprobs``); every rank takes part, rank 0 returns them.
    """

    items: list[MMItem]
    params: SamplingParams
    generator_seed: int
    prompt_token_ids: np.ndarray
    bad_words_ids: list[list[int]]
    stop_ids: list[int]
    keep_prompt: bool = False


@dataclass(frozen=True)
class DriverRow:
    """What the driver keeps of a request's sampling with several ranks: its multi-token bad
    words, whose bans it computes from the generated tokens each step (the structured-output
    manager's ``host_masks`` reads ``bad_word_prefixes`` as it does a ``RequestSampling``'s).
    """

    bad_word_prefixes: list[tuple[list[int], int]] | None

    @classmethod
    def of(cls, bad_words_ids: list[list[int]]) -> DriverRow:
        prefixes = [(list(word[:-1]), word[-1]) for word in bad_words_ids if len(word) > 1]
        return cls(prefixes or None)


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
    prompt = request.prompt_token_ids if request.keep_prompt else None
    return RequestState(request.items, sampling, prompt)
