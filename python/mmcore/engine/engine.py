"""``mmcore.Engine``: offline generation and chat over a local Hugging Face checkpoint."""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmcore import _core
from mmcore.engine.admission import RequestAdmission
from mmcore.engine.config import EngineConfig, resolve_config
from mmcore.engine.cpu_thread_tuner import cpu_thread_tuner_for
from mmcore.engine.engine_front import build_input_processor, chat_prompt
from mmcore.engine.engine_logging import StatLogger, log_startup
from mmcore.engine.fault_isolation import RequestFault, newest_requests
from mmcore.engine.request_tracker import RequestTracker, TokenTexts
from mmcore.engine.runner import LaunchedStep
from mmcore.engine.step_recovery import fail_completion, recover_failed_step
from mmcore.engine.torch_profiler import ProfilingCalls
from mmcore.engine.transcription import Transcription, transcribe
from mmcore.engine_args import EngineArgs
from mmcore.executor.remote_request import DriverRow
from mmcore.outputs import RequestOutput
from mmcore.sampling.sampler import PendingSample, SampledBatch
from mmcore.sampling_params import SamplingParams
from mmcore.structured_outputs import GrammarCompiler, StructuredOutputManager


class Engine(RequestAdmission, ProfilingCalls):
    """A multimodal LLM engine (vLLM's ``LLM``; ``mmcore.LLM`` is the same class).

    Args:
        model: a Hugging Face checkpoint folder (config.json, safetensors, tokenizer and
            processor files) or a hub id resolved through the HF cache (default: the demo model).
        **kwargs: the options of :class:`~mmcore.engine_args.EngineArgs` (vLLM's names:
            ``dtype``, ``max_model_len``, ``gpu_memory_utilization``, ``limit_mm_per_prompt``,
            ``mm_processor_kwargs``, ``enforce_eager``, ``trust_remote_code``, ...). As vLLM's
            ``LLM`` does, the offline engine does not log periodic statistics unless
            ``disable_log_stats=False``. With ``async_scheduling`` (default on CUDA) step N+1
            is scheduled and launched before step N's tokens are read back; outputs are
            identical to the synchronous mode. Tensor parallelism: ``tensor_parallel_size``,
            ``distributed_executor_backend``, ``mm_encoder_tp_mode`` (docs/distributed.md).

    Raises:
        TypeError: an unknown option (named).
        ValueError: a bad option value, or a model that cannot be found or run (one line).
        WorkerFailedError (a RuntimeError): from any call once a tensor-parallel worker died,
            hung or failed; the message names the rank.
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("disable_log_stats", True)
        self._init(EngineArgs.from_kwargs(model=model, **kwargs))

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs) -> Engine:
        """An engine built from already validated :class:`EngineArgs` (the CLI's path)."""
        engine = cls.__new__(cls)
        engine._init(engine_args)
        return engine

    def _init(self, engine_args: EngineArgs) -> None:
        started = time.perf_counter()
        self.config: EngineConfig = resolve_config(engine_args)
        cfg = self.config
        self.tokenizer = cfg.tokenizer
        self.model = cfg.model
        self.processor = cfg.processor
        self.inputs = build_input_processor(
            cfg, self.processor, self.tokenizer, cfg.processor_cache
        )
        # Where the model runs: this process ("uni") or one worker per tensor-parallel rank.
        self.executor = cfg.executor
        self.init_profiling()
        self.runner = getattr(self.executor, "runner", None)  # in-process runner, if any
        self.scheduler = _core.Scheduler(cfg.scheduler_config)
        self._eos_token_ids = cfg.eos_token_ids
        self._trackers: dict[str, RequestTracker] = {}
        self._core_to_tracker: dict[int, tuple[RequestTracker, int]] = {}
        # Several ranks: each live request's multi-token bad words (bans sent with each step).
        self._driver_rows: dict[int, DriverRow] = {}
        self._not_yet_scheduled: set[int] = set()  # core ids whose first step is pending
        self._token_text = TokenTexts(self.tokenizer)
        self.vocab_size = cfg.vocab_size
        self.structured_outputs = StructuredOutputManager(
            lambda: GrammarCompiler(self.tokenizer, self.vocab_size, self._eos_token_ids)
        )
        self._next_core_id = itertools.count()
        self._next_request_id = itertools.count()
        self._seed = cfg.seed
        self.async_scheduling = cfg.async_scheduling
        # Overlapped mode: the launched step whose tokens are not yet applied.
        self._in_flight: tuple[Any, PendingSample] | None = None
        self.num_generated_tokens = 0  # read by the stats logger
        self.num_prompt_tokens = 0  # prompt tokens accepted (each of n completions counts)
        self._stat_logger = None if engine_args.disable_log_stats else StatLogger(self)
        self._thread_tuner = cpu_thread_tuner_for(self.runner)
        log_startup(self, time.perf_counter() - started)

    def get_tokenizer(self) -> Any:
        """The Hugging Face tokenizer the engine uses (vLLM's ``LLM.get_tokenizer``)."""
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams with the checkpoint's generation_config.json defaults applied
        (``generation_config="auto"``), used when ``generate``/``chat`` get none."""
        return SamplingParams(**self.config.sampling_defaults)

    def _sample(self, out, launched: LaunchedStep | None, constrained: bool) -> PendingSample:
        """Enqueue the step's sampling: in-process after its host masks, if any; several ranks:
        the whole step is launched on the workers, its host masks sent with it."""
        if launched is None:
            req_ids = out.sampling_req_ids.tolist()
            rows = [self._driver_rows.get(r, DriverRow(None)) for r in req_ids]
            masks = (
                self.structured_outputs.host_masks(req_ids, rows, self._output_ids)
                if constrained
                else None
            )
            return self.executor.launch(out, masks)
        return self.runner.sample(launched, self._host_masks(launched) if constrained else None)

    def _drop_core(self, core_id: int, reason: str) -> None:
        self.scheduler.finish_request(core_id, reason)
        self._forget_core(core_id)

    def _forget_core(self, core_id: int) -> None:
        self.executor.remove_request(core_id)
        self._driver_rows.pop(core_id, None)
        self.structured_outputs.remove(core_id)
        self._core_to_tracker.pop(core_id, None)
        self._not_yet_scheduled.discard(core_id)

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its KV blocks and encoder references."""
        tracker = self._trackers.pop(request_id, None)
        if tracker is None:
            return
        for index, core_id in enumerate(tracker.core_ids):
            tracker.finish(index, "abort")
            self._drop_core(core_id, "abort")

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting or running."""
        return bool(self._trackers)

    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; return the requests that got new tokens or finished.

        With ``async_scheduling`` the step scheduled now is only launched: this call returns
        what the previous step produced, read back after the new one was enqueued. When the
        new step has rows whose grammar bitmask (or multi-token bad words) depends on the
        previous step's tokens, its forward is enqueued first, then the previous tokens are
        read and the masks filled on the host while the device runs that forward, then its
        sampling is enqueued.
        """
        self.executor.check_health()  # a failed worker fails every later step the same way
        if self._stat_logger is not None:
            self._stat_logger.maybe_log()
        out = self.scheduler.schedule()
        if self._not_yet_scheduled:
            self._note_first_scheduled(out)
        if self.runner is None:  # several ranks: a failing step is a worker failure (fail fast)
            return self._launch_and_apply(out)
        tuner = self._thread_tuner
        try:
            if tuner is None:
                return self._launch_and_apply(out)
            tuner.step_started()
            outputs = self._launch_and_apply(out)
            tuner.step_finished()
            return outputs
        except RequestFault as fault:
            return recover_failed_step(self, out, fault.core_ids, fault)
        except torch.OutOfMemoryError as exc:
            outputs = recover_failed_step(self, out, newest_requests(out.req_ids.tolist()), exc)
            # Fewer requests per step from now on (set once the step's requests are out).
            self.scheduler.set_max_num_seqs(max(1, out.num_reqs // 2))
            return outputs

    def _launch_and_apply(self, out) -> list[RequestOutput]:
        """Launch step ``out``; apply the step whose tokens are ready (this one, or in the
        overlapped mode the one before)."""
        if self.runner is None:  # several ranks: the workers forward and sample in one go
            launched = None
            req_ids = out.sampling_req_ids.tolist()
            rows = [self._driver_rows.get(r, DriverRow(None)) for r in req_ids]
            constrained = self.structured_outputs.needs_host_masks(req_ids, rows)
        else:
            launched = self.runner.forward(out)
            constrained = self.structured_outputs.needs_host_masks(launched.req_ids, launched.rows)
        if not self.async_scheduling:
            return self._apply(out, self._sample(out, launched, constrained).resolve())
        previous, outputs = self._in_flight, []
        if constrained and previous is not None:
            self._in_flight = None
            outputs, previous = self._apply(previous[0], previous[1].resolve()), None
        pending = self._sample(out, launched, constrained)
        self._in_flight = (out, pending) if out.num_reqs else None
        if previous is not None:
            outputs = self._apply(previous[0], previous[1].resolve())
        return outputs + self._settle_idle_step()

    def _settle_idle_step(self) -> list[RequestOutput]:
        """When only finished (or aborted) requests remain in the step in flight, apply it now
        so an idle engine holds no pending step."""
        if self._in_flight is None or self._trackers:
            return []
        outputs = self._apply(self._in_flight[0], self._in_flight[1].resolve())
        self._in_flight = None
        return outputs

    def _note_first_scheduled(self, out) -> None:
        """Metrics and prefix-cache hits of requests scheduled for the first time."""
        for core_id, num_computed in zip(out.req_ids.tolist(), out.num_computed_tokens.tolist()):
            if core_id in self._not_yet_scheduled:
                self._not_yet_scheduled.discard(core_id)
                self._core_to_tracker[core_id][0].mark_scheduled(num_computed)

    def _output_ids(self, core_id: int) -> list[int] | None:
        entry = self._core_to_tracker.get(core_id)
        return None if entry is None else entry[0].outputs[entry[1]].token_ids

    def _host_masks(self, launched: LaunchedStep):
        return self.structured_outputs.host_masks(launched.req_ids, launched.rows, self._output_ids)

    def _apply(self, out, sampled: SampledBatch) -> list[RequestOutput]:
        """Give step ``out``'s sampled tokens to the scheduler, detokenize, apply stop strings,
        advance grammars, collect log-probabilities."""
        result = self.scheduler.update_from_output(
            out, np.asarray(sampled.token_ids, dtype=np.int32)
        )
        self.num_generated_tokens += len(result.token_ids)
        touched: dict[str, RequestTracker] = {}
        for core_id, first, entries in sampled.prompt_logprobs:
            entry = self._core_to_tracker.get(core_id)
            if entry is not None:
                entry[0].add_prompt_logprobs(first, entries, self._token_text)
        sample_row = (
            {core_id: row for row, core_id in enumerate(out.sampling_req_ids.tolist())}
            if any(lp is not None for lp in sampled.logprobs)
            else {}
        )
        for core_id, token in zip(result.req_ids.tolist(), result.token_ids.tolist()):
            entry = self._core_to_tracker.get(core_id)
            if entry is None:
                continue
            tracker, index = entry
            row = sample_row.get(core_id)
            logprobs = sampled.logprobs[row] if row is not None else None
            try:
                if core_id in self.structured_outputs:
                    self.structured_outputs.accept(core_id, token)
                stop = tracker.add_token(index, token, logprobs, self._token_text)
            except Exception as exc:  # this request's text broke; the others go on
                fail_completion(self, core_id, exc)
                touched[tracker.request_id] = tracker
                continue
            if stop is not None:
                tracker.finish(index, "stop", stop)
                self._drop_core(core_id, "stop")
            touched[tracker.request_id] = tracker
        for core_id, reason in zip(result.finished_req_ids.tolist(), result.finish_reasons):
            entry = self._core_to_tracker.get(core_id)
            if entry is None:
                continue
            tracker, index = entry
            token_ids = tracker.outputs[index].token_ids
            tracker.finish(index, reason, token_ids[-1] if reason == "stop" and token_ids else None)
            self._forget_core(core_id)
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
            sampling_params: one for all prompts, or one per prompt (default:
                :meth:`get_default_sampling_params`).
            use_tqdm: show a progress bar.

        Returns:
            One RequestOutput per prompt, in input order.

        Raises:
            ValueError: a prompt or sampling value is invalid. The whole batch is processed
                before any of it runs, so nothing of it has run or holds KV blocks then.
        """
        prompt_list = prompts if isinstance(prompts, list) else [prompts]
        if isinstance(sampling_params, list):
            if len(sampling_params) != len(prompt_list):
                raise ValueError(
                    f"got {len(sampling_params)} sampling_params for {len(prompt_list)} prompts"
                )
            params_list = sampling_params
        else:
            params_list = [sampling_params or self.get_default_sampling_params()] * len(prompt_list)
        ids = [f"gen-{next(self._next_request_id)}" for _ in prompt_list]
        processed = [self.inputs.process(p) for p in prompt_list]  # validate all before running
        try:
            for request_id, proc, params in zip(ids, processed, params_list):
                self._add_processed(request_id, proc, params)
        except ValueError:
            self._abort_all(ids)
            raise
        return self._run_to_completion(ids, use_tqdm)

    def _abort_all(self, ids: list[str]) -> None:
        """Abort ``ids`` and settle a step still in flight, so the engine is left idle."""
        for request_id in ids:
            self.abort_request(request_id)
        self._settle_idle_step()

    def _run_to_completion(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        """Step until every request of ``ids`` finished; abort the rest if interrupted."""
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="generate", disable=not use_tqdm or len(ids) < 2)
        wanted = set(ids)
        finished = False
        try:
            while len(results) < len(ids):
                for output in self.step():
                    if output.finished and output.request_id in wanted:
                        results[output.request_id] = output
                        bar.update(1)
            finished = True
        finally:
            bar.close()
            if not finished:
                self._abort_all([i for i in ids if i not in results])
        return [results[i] for i in ids]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | None = None,
        chat_template: str | None = None,
        use_tqdm: bool = True,
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict] | None = None,
    ) -> list[RequestOutput]:
        """Generate replies to chat conversations (HF/OpenAI content parts).

        Args:
            messages: one conversation (list of ``{"role", "content"}``) or a list of them.
                Content is a string or parts: ``{"type": "text", "text"}``, ``{"type": "image",
                "image": PIL}``, ``{"type": "image_url", "image_url": {"url": data-URL or path}}``.
            sampling_params: as in :meth:`generate`.
            chat_template: a Jinja template overriding the engine's (``chat_template``
                option, else the checkpoint's).
            use_tqdm: show a progress bar.
            add_generation_prompt: end the prompt with the assistant turn's opening.
            continue_final_message: leave the last (assistant) message open to be continued.
            chat_template_kwargs: extra template variables (e.g. ``enable_thinking``).
            tools: OpenAI tool definitions the template shows the model.

        Returns:
            One RequestOutput per conversation.
        """
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        options = {
            "add_generation_prompt": add_generation_prompt,
            "continue_final_message": continue_final_message,
            "chat_template_kwargs": chat_template_kwargs,
            "tools": tools,
        }
        prompts = [self.chat_prompt(conv, chat_template, **options) for conv in conversations]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def chat_prompt(
        self, messages: list[dict], chat_template: str | None = None, **render_options: Any
    ) -> dict:
        """Render one conversation into a ``{"prompt", "multi_modal_data"}`` prompt.

        Args:
            messages: one conversation, as :meth:`chat` takes it.
            chat_template: a Jinja template overriding the checkpoint's.
            render_options: ``tools``, ``add_generation_prompt``, ``continue_final_message``,
                ``chat_template_kwargs`` (see ``mmcore.engine.chat.render_chat``).

        Returns:
            The prompt dict :meth:`generate` takes.
        """
        return chat_prompt(
            self.processor,
            self.tokenizer,
            self.config.chat_template,
            messages,
            chat_template,
            **render_options,
        )

    def transcribe(
        self,
        audio: Any,
        language: str | None = None,
        task: str = "transcribe",
        *,
        prompt: str | None = None,
        timestamps: bool = False,
        temperature: float = 0.0,
    ) -> Transcription:
        """Transcribe (or translate to English) speech with an encoder-decoder model (Whisper).

        Args:
            audio: ``(waveform, sampling_rate)``, a waveform at the model's rate, encoded bytes
                (WAV, FLAC, OGG, MP3, M4A, WebM), a data URL or an allowed local path. Longer
                than 30 s: split into windows transcribed as sub-requests and joined in order.
            language: language code or name (``"en"``, ``"german"``); None detects it.
            task: ``"transcribe"`` or ``"translate"``.
            prompt: previous text to condition on (OpenAI's ``prompt``).
            timestamps: let the model write timestamps (timed ``segments``).
            temperature: 0 for greedy decoding.

        Returns:
            A :class:`~mmcore.engine.transcription.Transcription`.

        Raises:
            ValueError: not a transcription model, bad audio, language or task.
        """
        return transcribe(
            self,
            audio,
            language,
            task,
            prompt=prompt,
            timestamps=timestamps,
            temperature=temperature,
        )

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
