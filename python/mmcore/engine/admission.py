"""How a request enters the engine: checks, its tracker, one core request per completion in
the C++ scheduler, and its sampling state in the runner (in-process) or the workers (several
ranks). :class:`mmcore.engine.engine.Engine` inherits these methods."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmcore.engine.inputs import ProcessedPrompt
from mmcore.engine.request_checks import check_params_for_model
from mmcore.engine.request_tracker import RequestTracker
from mmcore.engine.runner import RequestState
from mmcore.engine.sampling_setup import (
    check_token_ids,
    min_tokens_stop_ids,
    tokenize_bad_words,
    truncate_prompt,
)
from mmcore.executor.remote_request import DriverRow, RemoteRequest
from mmcore.sampling_params import SamplingParams


class RequestAdmission:
    """The engine's add-request path (uses the engine's scheduler, executor, trackers)."""

    def add_request(
        self, request_id: str, prompt: Any, params: SamplingParams | None = None
    ) -> None:
        """Queue one prompt (any form :meth:`generate` takes). Raises ValueError on bad input."""
        params = params or self.get_default_sampling_params()
        if request_id in self._trackers:
            raise ValueError(f"request id {request_id!r} is already running")
        processed = self.inputs.process(prompt)
        self._add_processed(request_id, processed, params)

    def add_processed(
        self, request_id: str, processed: ProcessedPrompt, params: SamplingParams
    ) -> None:
        """Queue a prompt already processed by ``self.inputs.process`` (which is thread-safe,
        so a server can process inputs in worker threads). Raises ValueError on bad input."""
        if request_id in self._trackers:
            raise ValueError(f"request id {request_id!r} is already running")
        self._add_processed(request_id, processed, params)

    def _add_processed(
        self, request_id: str, processed: ProcessedPrompt, params: SamplingParams
    ) -> None:
        check_params_for_model(
            params, vocab_size=self.vocab_size, max_model_len=self.config.max_model_len
        )
        processed = truncate_prompt(
            processed, params.truncate_prompt_tokens, self.config.max_model_len
        )
        num_prompt = len(processed.token_ids)
        room = self.config.max_model_len - num_prompt
        if room < 1:
            raise ValueError(
                f"prompt is {num_prompt} tokens, which leaves no room to generate within "
                f"max_model_len={self.config.max_model_len}"
            )
        max_tokens = min(params.max_tokens or room, room)
        check_token_ids(params, self.vocab_size)
        bad_words_ids = tokenize_bad_words(self.tokenizer, params.bad_words, self.vocab_size)
        grammar = (
            self.structured_outputs.compile(params.structured_outputs)
            if params.structured_outputs is not None
            else None
        )
        prompt_ids = processed.token_ids.tolist()
        tracker = RequestTracker.create(
            request_id, processed.prompt, prompt_ids, params, self.tokenizer
        )
        tracker.processed, tracker.max_tokens = processed, max_tokens
        stop_ids = min_tokens_stop_ids(params, self._eos_token_ids)
        core_ids = [next(self._next_core_id) for _ in range(params.n)]
        added = []
        try:
            for index, core_id in enumerate(core_ids):
                self._add_core(core_id, processed.token_ids, tracker, max_tokens, params.min_tokens)
                added.append(core_id)
                self._add_to_executor(
                    core_id,
                    processed,
                    params,
                    self._generator_seed(params, index, core_id),
                    bad_words_ids,
                    stop_ids,
                    keep_prompt=params.prompt_logprobs is not None and index == 0,
                )
                if grammar is not None:
                    self.structured_outputs.add(core_id, grammar)
                self._core_to_tracker[core_id] = (tracker, index)
                self._not_yet_scheduled.add(core_id)
        except Exception:  # leave no half-added request behind, whatever failed
            for core_id in added:
                self._drop_core(core_id, "abort")
            raise
        tracker.core_ids = core_ids
        self._trackers[request_id] = tracker
        self.num_prompt_tokens += len(processed.token_ids) * params.n

    def _add_core(
        self,
        core_id: int,
        token_ids: np.ndarray,
        tracker: RequestTracker,
        max_tokens: int,
        min_tokens: int,
    ) -> None:
        """Add one completion's request to the scheduler (first time, or recomputed)."""
        params, mrope = tracker.params, tracker.processed.mrope
        self.scheduler.add_request(
            core_id,
            token_ids,
            tracker.processed.features,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            eos_token_ids=self._eos_token_ids,
            stop_token_ids=params.stop_token_ids,
            ignore_eos=params.ignore_eos,
            # Prompt log-probabilities need every prompt position computed: a salt of its own
            # keeps the request off prefix-cache hits.
            cache_salt=f"prompt-logprobs:{core_id}" if params.prompt_logprobs is not None else "",
            mrope_positions=None if mrope is None else mrope.positions,
            mrope_delta=0 if mrope is None else mrope.delta,
            encoder_input=tracker.processed.encoder_input,
        )

    def _generator_seed(self, params: SamplingParams, index: int, core_id: int) -> int:
        """Seed of the completion's own generator (made on the model's device, so its noise
        never crosses from the host)."""
        seed = params.seed if params.seed is not None else self._seed * 1_000_003 + core_id
        return hash((seed, index)) & 0x7FFF_FFFF_FFFF_FFFF

    def _add_to_executor(
        self,
        core_id: int,
        processed: ProcessedPrompt,
        params: SamplingParams,
        seed: int,
        bad_words_ids: list[list[int]],
        stop_ids: list[int],
        keep_prompt: bool,
    ) -> None:
        """Give the request's items and sampling inputs to the runner (in-process) or the
        workers (several ranks: features needing the driver's host per step are refused)."""
        if self.runner is None:
            self._driver_rows[core_id] = DriverRow.of(bad_words_ids)
            self.executor.add_request(
                core_id,
                RemoteRequest(
                    processed.items,
                    params,
                    seed,
                    processed.token_ids,
                    bad_words_ids,
                    stop_ids,
                    keep_prompt,
                ),
            )
            return
        generator = torch.Generator(device=self.runner.device).manual_seed(seed)
        sampling = self.runner.new_sampling(
            params, generator, processed.token_ids, bad_words_ids, stop_ids
        )
        prompt = processed.token_ids if keep_prompt else None
        self.executor.add_request(core_id, RequestState(processed.items, sampling, prompt))
