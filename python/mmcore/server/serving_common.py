"""What chat and completions share: the server state, model check, submission, collection."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from mmcore.sampling_params import SamplingParams
from mmcore.server.async_engine import (
    AsyncEngine,
    EngineDeadError,
    EngineRequestError,
    RequestStream,
    StreamUpdate,
)
from mmcore.server.errors import APIError
from mmcore.server.media_fetch import MediaPolicy
from mmcore.server.metrics import RequestRecorder, ServerMetrics
from mmcore.server.overload import AdmissionControl
from mmcore.server.responses import CompletionAccumulator

_DISCONNECT_POLL_S = 0.5
# Raised by input processing only on data a user sent that is shaped wrongly.
_MALFORMED_INPUT = (TypeError, KeyError, IndexError, OverflowError)
logger = logging.getLogger("mmcore.server")


@dataclass
class ServerState:
    """Everything the handlers need, built once at startup.

    Attributes:
        engine: the async engine front.
        metrics: the Prometheus metrics.
        model_names: names the model is served under (the first is reported).
        media: where images may come from.
        created: server start time (Unix seconds), reported by ``/v1/models``.
        tool_call_parser: the parser of ``tool_choice="auto"`` (None: auto is refused).
        allow_special_tokens_in_prompts: completion string prompts may carry control tokens
            (by default special token strings in them are plain text).
        admission: the bounded queue of requests (429 when full).
    """

    engine: AsyncEngine
    metrics: ServerMetrics
    model_names: list[str]
    media: MediaPolicy
    created: int
    tool_call_parser: str | None = None
    allow_special_tokens_in_prompts: bool = False
    admission: AdmissionControl = field(default_factory=lambda: AdmissionControl(1, None))

    @property
    def tokenizer(self):
        return self.engine.engine.tokenizer

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """SamplingParams values for fields a request leaves unset (generation_config)."""
        return dict(getattr(self.engine.engine.config, "sampling_defaults", {}))

    def check_model(self, name: str | None) -> str:
        """The served model name for a request's ``model`` field; 404 if unknown."""
        if name is None or name in self.model_names:
            return self.model_names[0] if name is None else name
        raise APIError(404, f"the model {name!r} does not exist", "model_not_found")


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sampling_params(build: Callable[[], SamplingParams], vocab_size: int) -> SamplingParams:
    """Build sampling parameters, turning a ValueError into a 400; token ids must be in the
    vocabulary."""
    try:
        params = build()
    except ValueError as exc:
        raise APIError(400, str(exc), "invalid_value") from exc
    for name in ("logit_bias", "allowed_token_ids", "stop_token_ids"):
        ids = getattr(params, name, None) or ()
        bad = [t for t in ids if not 0 <= int(t) < vocab_size]
        if bad:
            raise APIError(
                400, f"{name} has token ids outside [0, {vocab_size}): {bad[:5]}", "invalid_value"
            )
    return params


async def process_and_submit(
    state: ServerState,
    request_id: str,
    prepare: Callable[[], Any],
    params: SamplingParams,
    arrival_time: float,
    timeout_s: float | None = None,
) -> RequestStream:
    """Admit the request, run ``prepare`` (media, template, processor) in the pool, then
    submit to the engine.

    Args:
        timeout_s: seconds from arrival after which the request is aborted (None: never).

    Raises:
        APIError: 429 when the server is full, 400 for bad input (anything the engine refuses
            with ValueError), 408 when the timeout passed before it ran, 503 when the engine is
            not running.
    """
    from PIL import UnidentifiedImageError

    engine = state.engine.engine

    def prepare_and_compile():
        processed = prepare()
        if params.structured_outputs is not None and not state.engine.compiles_grammars:
            # Compiled here, in the pool: the engine thread then finds it in the cache instead
            # of stalling every running request while xgrammar compiles.
            engine.structured_outputs.compile(params.structured_outputs)
        return processed

    state.admission.admit()
    try:
        processed = await state.engine.run_in_pool(prepare_and_compile)
        if timeout_s is not None and time.monotonic() - arrival_time >= timeout_s:
            raise APIError(408, f"the request timed out after {timeout_s} s", "timeout")
        stream = await state.engine.submit(request_id, processed, params, arrival_time)
    except (ValueError, UnidentifiedImageError) as exc:
        state.admission.release()
        raise APIError(400, str(exc), "invalid_request") from exc
    except _MALFORMED_INPUT as exc:  # malformed user data that slipped past the checks
        state.admission.release()
        logger.warning("request %s: malformed input: %r", request_id, exc)
        raise APIError(400, f"invalid request: {exc}", "invalid_request") from exc
    except EngineDeadError as exc:
        state.admission.release()
        raise APIError(503, str(exc), "engine_unavailable") from exc
    except BaseException:
        state.admission.release()
        raise
    stream.on_close = state.admission.release
    if timeout_s is not None:
        remaining = max(0.0, timeout_s - (time.monotonic() - arrival_time))
        handle = asyncio.get_running_loop().call_later(remaining, stream.expire)
        stream.on_close = _chain(handle.cancel, state.admission.release)
    return stream


def _chain(*callbacks: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        for callback in callbacks:
            callback()

    return run


async def iterate(
    stream: RequestStream, recorder: RequestRecorder, num_completions: int
) -> AsyncIterator[StreamUpdate]:
    """Yield the stream's updates while recording metrics; records the finish once."""
    reasons: list[str | None] = [None] * num_completions
    try:
        async for update in stream:
            now = time.monotonic()
            for delta in update.deltas:
                recorder.on_tokens(delta.index, len(delta.token_ids), now)
                if delta.finish_reason is not None:
                    reasons[delta.index] = delta.finish_reason
            yield update
    except EngineRequestError:
        reasons = [r or "error" for r in reasons]
        raise
    finally:
        recorder.finish([r or "abort" for r in reasons], time.monotonic())


async def collect(
    updates: AsyncIterator[StreamUpdate], num_completions: int
) -> list[CompletionAccumulator]:
    """Drain a request's updates into one accumulator per completion.

    Raises:
        APIError: 503 when the engine dies before the request finishes.
    """
    accs = [CompletionAccumulator() for _ in range(num_completions)]
    try:
        async for update in updates:
            for delta in update.deltas:
                accs[delta.index].add(delta)
    except EngineDeadError as exc:
        raise APIError(503, str(exc), "engine_unavailable") from exc
    return accs


async def until_disconnect(raw_request: Request, work: Any) -> Any:
    """Await ``work``; cancel it (aborting its requests) if the client goes away first.

    Returns:
        The result of ``work``, or None when the client disconnected.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                try:
                    return task.result()
                except EngineRequestError as exc:
                    raise APIError(exc.status, str(exc), exc.code) from exc
            if await raw_request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return None
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def merge(iterators: list[AsyncIterator[Any]]) -> AsyncIterator[tuple[int, Any]]:
    """Interleave several async iterators as ``(which, item)``; cancels the rest on exit."""
    queue: asyncio.Queue = asyncio.Queue()
    done_marker = object()

    async def pump(which: int, it: AsyncIterator[Any]) -> None:
        try:
            async for item in it:
                await queue.put((which, item))
            await queue.put((which, done_marker))
        except Exception as exc:  # handed to the consumer, which re-raises it
            await queue.put((which, exc))

    tasks = [asyncio.ensure_future(pump(i, it)) for i, it in enumerate(iterators)]
    remaining = len(tasks)
    try:
        while remaining:
            which, item = await queue.get()
            if item is done_marker:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield which, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class EngineStreamingResponse(StreamingResponse):
    """A streaming response that aborts its engine requests however it ends.

    The body iterator aborts on cancellation once it has started; this also covers a response
    that is torn down before its first chunk.
    """

    def __init__(self, content: AsyncIterator[str], streams: list[RequestStream]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._streams = streams

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for stream in self._streams:
                stream.abort()
