"""``mmcore.Engine``: offline generation and chat over a local Hugging Face checkpoint."""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmcore import _core
from mmcore.engine.chat import render_chat
from mmcore.engine.config import EngineConfig, resolve_config
from mmcore.engine.inputs import InputProcessor, ProcessedPrompt
from mmcore.engine.runner import RequestState
from mmcore.outputs import CompletionOutput, RequestOutput
from mmcore.sampling.detokenizer import IncrementalDetokenizer
from mmcore.sampling.sampler import PendingSample, SampledBatch
from mmcore.sampling_params import SamplingParams

_PARALLEL_INPUT_MIN = 16  # fewer prompts are processed inline
_MAX_INPUT_WORKERS = 8


@dataclass
class _Tracker:
    """One user request: its prompt and its n completions (one core request each)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    outputs: list[CompletionOutput]
    detokenizers: list[IncrementalDetokenizer]
    core_ids: list[int] = field(default_factory=list)

    def to_output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=self.outputs,
            finished=all(o.finished for o in self.outputs),
        )


class Engine:
    """A multimodal LLM engine over a local HF checkpoint folder.

    Args:
        model: path of a Hugging Face checkpoint folder (config.json, safetensors, tokenizer,
            processor files).
        dtype: "auto" (float32 on CPU, the checkpoint's half type on GPU), or a torch dtype name.
        device: "auto" (CUDA if available), "cpu" or "cuda[:N]".
        max_model_len: longest prompt + output (default: the model's max positions).
        max_num_seqs: most requests in one step.
        max_num_batched_tokens: most tokens in one step (default: 8192, at least max_model_len
            without chunked prefill).
        block_size: tokens per KV cache block.
        kv_cache_memory: bytes for the KV cache (default: profiled on GPU, 2 GiB on CPU).
        enable_prefix_caching: reuse KV blocks of identical prefixes (images included).
        enable_chunked_prefill: split long prompts across steps.
        limit_mm_per_prompt: most items per modality in one prompt, e.g. ``{"image": 4}``.
        mm_processor_kwargs: extra arguments for the multimodal processor.
        seed: seed of the random weights (dummy) and of unseeded sampling.
        load_format: "auto" | "safetensors" | "dummy" (random weights, real architecture).
        allowed_local_media_path: folder that local image paths must lie in.
        gpu_memory_utilization: fraction of GPU memory the engine may use.
        enforce_eager: never replay CUDA graphs (by default decode-only steps on CUDA replay
            graphs captured at start-up for padded batch sizes).
        async_scheduling: overlap the host with the device (default: on for CUDA, off on CPU).
            Step N+1 is scheduled and launched before step N's tokens are read back; its
            not-yet-known input ids are gathered on the device from step N's samples. Outputs
            are identical to the synchronous mode; each step() returns the results of the step
            launched before it.
        tensor_parallel_size: shard the model over this many ranks (GPUs; worker processes on
            CPU), see docs/distributed.md.
        distributed_executor_backend: "mp" (a spawned worker per rank, the default above one
            rank), "ray" (Ray actors, across nodes) or "uni" (in this process, one rank only).
        mm_encoder_tp_mode: "weights" (shard the vision encoder like the LM) or "data" (each
            rank runs the whole encoder on a share of the step's images).

    Raises:
        WorkerFailedError (a RuntimeError) from any call once a tensor-parallel worker died,
        hung or failed; the message names the rank.
    """

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.config: EngineConfig = resolve_config(model, **kwargs)
        cfg = self.config
        self.tokenizer = cfg.tokenizer
        self.model = cfg.model
        self.processor = cfg.processor
        self.inputs = InputProcessor(
            self.processor,
            self.tokenizer,
            model_id=cfg.model_path,
            max_model_len=cfg.max_model_len,
            limit_mm_per_prompt=cfg.limit_mm_per_prompt,
            mm_processor_kwargs=cfg.mm_processor_kwargs,
            cache=cfg.processor_cache,
            allowed_local_media_path=cfg.allowed_local_media_path,
        )
        # Where the model runs: this process ("uni") or one worker per tensor-parallel rank.
        self.executor = cfg.executor
        self.runner = getattr(self.executor, "runner", None)  # in-process runner, if any
        self.scheduler = _core.Scheduler(cfg.scheduler_config)
        self._eos_token_ids = cfg.eos_token_ids
        self._trackers: dict[str, _Tracker] = {}
        self._core_to_tracker: dict[int, tuple[_Tracker, int]] = {}
        self._next_core_id = itertools.count()
        self._next_request_id = itertools.count()
        self._seed = cfg.seed
        self.async_scheduling = cfg.async_scheduling
        # Overlapped mode: the launched step whose tokens are not yet applied.
        self._in_flight: tuple[Any, PendingSample] | None = None
        self._input_pool: ThreadPoolExecutor | None = None  # generate()'s input workers

    # ----------------------------------------------------------------- request lifecycle
    def add_request(
        self, request_id: str, prompt: Any, params: SamplingParams | None = None
    ) -> None:
        """Queue one prompt (any form :meth:`generate` takes). Raises ValueError on bad input."""
        params = params or SamplingParams()
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
        num_prompt = len(processed.token_ids)
        room = self.config.max_model_len - num_prompt
        if room < 1:
            raise ValueError(
                f"prompt is {num_prompt} tokens, which leaves no room to generate within "
                f"max_model_len={self.config.max_model_len}"
            )
        max_tokens = min(params.max_tokens or room, room)
        prompt_ids = processed.token_ids.tolist()
        tracker = _Tracker(
            request_id=request_id,
            prompt=processed.prompt,
            prompt_token_ids=prompt_ids,
            params=params,
            outputs=[CompletionOutput(index=i) for i in range(params.n)],
            detokenizers=[
                IncrementalDetokenizer(
                    self.tokenizer, prompt_ids, params.stop_strings, params.skip_special_tokens
                )
                for _ in range(params.n)
            ],
        )
        if params.logprobs is not None:
            for out in tracker.outputs:
                out.logprobs = []
        core_ids = [next(self._next_core_id) for _ in range(params.n)]
        added = []
        try:
            for index, core_id in enumerate(core_ids):
                self.scheduler.add_request(
                    core_id,
                    processed.token_ids,
                    processed.features,
                    max_tokens=max_tokens,
                    min_tokens=params.min_tokens,
                    eos_token_ids=self._eos_token_ids,
                    stop_token_ids=params.stop_token_ids,
                    ignore_eos=params.ignore_eos,
                )
                added.append(core_id)
                self.executor.add_request(
                    core_id,
                    RequestState(processed.items, params, self._generator(params, index, core_id)),
                )
                self._core_to_tracker[core_id] = (tracker, index)
        except ValueError:
            for core_id in added:
                self._drop_core(core_id, "abort")
            raise
        tracker.core_ids = core_ids
        self._trackers[request_id] = tracker

    def _generator(self, params: SamplingParams, index: int, core_id: int) -> torch.Generator:
        seed = params.seed if params.seed is not None else self._seed * 1_000_003 + core_id
        return torch.Generator().manual_seed(hash((seed, index)) & 0x7FFF_FFFF_FFFF_FFFF)

    def _drop_core(self, core_id: int, reason: str) -> None:
        self.scheduler.finish_request(core_id, reason)
        self.executor.remove_request(core_id)
        self._core_to_tracker.pop(core_id, None)

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its KV blocks and encoder references."""
        tracker = self._trackers.pop(request_id, None)
        if tracker is None:
            return
        for core_id, out in zip(tracker.core_ids, tracker.outputs):
            if not out.finished:
                out.finish_reason = "abort"
            self._drop_core(core_id, "abort")

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting or running."""
        return bool(self._trackers)

    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; return the requests that got new tokens or finished.

        With ``async_scheduling`` the step scheduled now is only launched: this call returns
        what the previous step produced, read back after the new one was enqueued.
        """
        self.executor.check_health()  # a failed worker fails every later step the same way
        out = self.scheduler.schedule()
        pending = self.executor.launch(out)
        if not self.async_scheduling:
            return self._apply(out, pending.resolve())
        previous, self._in_flight = self._in_flight, (out, pending) if out.num_reqs else None
        outputs = self._apply(previous[0], previous[1].resolve()) if previous else []
        if self._in_flight is not None and not self._trackers:
            # Only finished requests remain in the step in flight: settle it now so an idle
            # engine holds no pending step.
            outputs += self._apply(self._in_flight[0], self._in_flight[1].resolve())
            self._in_flight = None
        return outputs

    def _apply(self, out, sampled: SampledBatch) -> list[RequestOutput]:
        """Give step ``out``'s sampled tokens to the scheduler, detokenize, apply stop strings."""
        result = self.scheduler.update_from_output(
            out, np.asarray(sampled.token_ids, dtype=np.int32)
        )
        sample_row = {core_id: row for row, core_id in enumerate(out.sampling_req_ids.tolist())}
        touched: dict[str, _Tracker] = {}
        for core_id, token in zip(result.req_ids.tolist(), result.token_ids.tolist()):
            entry = self._core_to_tracker.get(core_id)
            if entry is None:
                continue
            tracker, index = entry
            completion = tracker.outputs[index]
            completion.token_ids.append(token)
            row = sample_row.get(core_id)
            if (
                completion.logprobs is not None
                and row is not None
                and sampled.logprobs[row] is not None
            ):
                completion.logprobs.append(sampled.logprobs[row])
            detok = tracker.detokenizers[index]
            stop = detok.append(token)
            completion.text = detok.text
            if stop is not None:
                completion.finish_reason, completion.stop_reason = "stop", stop
                self._drop_core(core_id, "stop")
            touched[tracker.request_id] = tracker
        for core_id, reason in zip(result.finished_req_ids.tolist(), result.finish_reasons):
            entry = self._core_to_tracker.pop(core_id, None)
            if entry is None:
                continue
            tracker, index = entry
            completion = tracker.outputs[index]
            completion.finish_reason = reason
            if reason == "stop" and completion.token_ids:
                completion.stop_reason = completion.token_ids[-1]
            self.executor.remove_request(core_id)
            touched[tracker.request_id] = tracker
        outputs = []
        for request_id, tracker in touched.items():
            output = tracker.to_output()
            if output.finished:
                self._trackers.pop(request_id, None)
            outputs.append(output)
        return outputs

    # ----------------------------------------------------------------- offline API
    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate completions for a batch of prompts.

        Args:
            prompts: one prompt or a list: strings, ``{"prompt": str, "multi_modal_data": {...}}``
                or ``{"prompt_token_ids": [...], "multi_modal_data": {...}}``.
            sampling_params: one for all prompts, or one per prompt (default: SamplingParams()).
            use_tqdm: show a progress bar.

        Returns:
            One RequestOutput per prompt, in input order.

        Raises:
            ValueError: a prompt or sampling value is invalid; no prompt of the batch is run.
        """
        prompt_list = prompts if isinstance(prompts, list) else [prompts]
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(prompt_list):
                raise ValueError(
                    f"got {len(sampling_params)} sampling_params for {len(prompt_list)} prompts"
                )
            params_list = sampling_params
        else:
            params_list = [sampling_params or SamplingParams()] * len(prompt_list)
        processed = self._process_all(prompt_list)  # validate all before running
        ids = [f"gen-{next(self._next_request_id)}" for _ in prompt_list]
        try:
            for request_id, proc, params in zip(ids, processed, params_list):
                self._add_processed(request_id, proc, params)
        except ValueError:
            for request_id in ids:
                self.abort_request(request_id)
            raise
        return self._run_to_completion(ids, use_tqdm)

    def _process_all(self, prompts: list) -> list[ProcessedPrompt]:
        """Process prompts in input order; large batches in worker threads (image decoding and
        resizing release the GIL), so a 1,000-image batch does not wait on one core."""
        if len(prompts) < _PARALLEL_INPUT_MIN:
            return [self.inputs.process(p) for p in prompts]
        if self._input_pool is None:
            workers = min(_MAX_INPUT_WORKERS, os.cpu_count() or 1)
            self._input_pool = ThreadPoolExecutor(workers, thread_name_prefix="mmcore-inputs")
        return list(self._input_pool.map(self.inputs.process, prompts))

    def _run_to_completion(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="generate", disable=not use_tqdm or len(ids) < 2)
        wanted = set(ids)
        try:
            while len(results) < len(ids):
                for output in self.step():
                    if output.finished and output.request_id in wanted:
                        results[output.request_id] = output
                        bar.update(1)
        finally:
            bar.close()
            for request_id in ids:
                if request_id not in results:
                    self.abort_request(request_id)
        return [results[i] for i in ids]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | None = None,
        chat_template: str | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate replies to chat conversations (HF/OpenAI content parts).

        Args:
            messages: one conversation (list of ``{"role", "content"}``) or a list of them.
                Content is a string or parts: ``{"type": "text", "text"}``, ``{"type": "image",
                "image": PIL}``, ``{"type": "image_url", "image_url": {"url": data-URL or path}}``.
            sampling_params: as in :meth:`generate`.
            chat_template: a Jinja template overriding the checkpoint's.
            use_tqdm: show a progress bar.

        Returns:
            One RequestOutput per conversation.
        """
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        prompts = [self.chat_prompt(conv, chat_template) for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def chat_prompt(self, messages: list[dict], chat_template: str | None = None) -> dict:
        """Render one conversation into a ``{"prompt", "multi_modal_data"}`` prompt."""
        placeholders = {
            m: self.processor.placeholder_text(m) for m in self.processor.supported_modalities
        }
        prompt, media = render_chat(
            self.tokenizer, messages, chat_template or self.config.chat_template, placeholders
        )
        return {"prompt": prompt, "multi_modal_data": media}

    # ----------------------------------------------------------------- introspection
    def stats(self) -> dict[str, Any]:
        """Counters of the core (KV blocks, prefix and encoder cache hits) and the runner."""
        stats = dict(self.scheduler.stats())
        stats.update(self.executor.counters())
        stats["num_blocks"] = self.config.num_blocks
        return stats

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    def shutdown(self) -> None:
        """Stop the worker processes (tensor parallel); the engine cannot run afterwards.

        Workers also stop when the engine is garbage-collected or the interpreter exits.
        """
        self.executor.shutdown()
