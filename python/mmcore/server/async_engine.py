"""An asyncio front for ``Engine``: one thread owns the engine, coroutines stream results.

    HTTP handler ──process()──► worker pool (media fetch, chat template, image processor)
         │                                    │ ProcessedPrompt
         │ RequestStream ◄─ asyncio.Queue ◄── engine thread: commands (add/abort/stop), step()
         ▼
    SSE / JSON

Every engine call happens on the engine thread, so the engine needs no locks; input processing
runs in the pool so images never stall a step; many requests share each step's batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mmcore.outputs import RequestOutput
from mmcore.sampling_params import SamplingParams
from mmcore.server.stream_updates import (  # noqa: F401 - re-exported for the serving modules
    CompletionDelta,
    StreamUpdate,
    _Active,
    merge_updates,
    output_update,
)

logger = logging.getLogger("mmcore.server")

# How often a waiting request checks that the engine thread is still alive.
_LIVENESS_CHECK_S = 1.0


class EngineRequestError(RuntimeError):
    """A request could not be completed; ``status`` and ``code`` say how to report it."""

    status = 500
    code = "request_failed"


class EngineDeadError(EngineRequestError):
    """The engine thread failed or has stopped; the request cannot be served."""

    status = 503
    code = "engine_unavailable"


class RequestFailedError(EngineRequestError):
    """The engine failed this one request (its step raised); the engine goes on."""


@dataclass
class _Accepted:
    """First queue item: the engine took the request."""


def _deliver(batch: list[tuple[asyncio.Queue, StreamUpdate]]) -> None:
    """Runs on the event loop: hand each request its update."""
    for q, update in batch:
        q.put_nowait(update)


@dataclass
class RequestStream:
    """The results of one submitted request, as an async iterator of :class:`StreamUpdate`.

    Attributes:
        request_id: the engine request id.
        prompt_token_ids: the prompt after placeholder expansion.
        arrival_time: ``time.monotonic()`` when the HTTP request arrived.
    """

    request_id: str
    prompt_token_ids: list[int]
    arrival_time: float
    _queue: asyncio.Queue
    _engine: AsyncEngine
    finished: bool = field(default=False)
    prompt_logprobs: list | None = None  # set once they arrive, when asked for
    on_close: Callable[[], None] | None = None  # called once when the stream ends

    async def __aiter__(self) -> AsyncIterator[StreamUpdate]:
        held: Any = None  # an item taken while merging that could not join the update
        try:
            while not self.finished:
                if held is not None:
                    item, held = held, None
                else:
                    item = await self._engine.next_item(self._queue)
                if isinstance(item, BaseException):
                    self.finished = True
                    raise item
                # A consumer slower than the engine gets what piled up as one update (one SSE
                # event instead of one per step), so a busy event loop catches up.
                while not item.finished and not self._queue.empty():
                    following = self._queue.get_nowait()
                    if not isinstance(following, StreamUpdate):
                        held = following
                        break
                    item = merge_updates(item, following)
                self.finished = item.finished
                if item.prompt_logprobs is not None:
                    self.prompt_logprobs = item.prompt_logprobs
                yield item
        finally:
            if not self.finished:  # the consumer left early (client gone, cancelled)
                self.abort()
            self._close()

    def abort(self) -> None:
        """Stop the request in the engine (frees its KV blocks)."""
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)
        self._close()

    def expire(self) -> None:
        """Abort the request in the engine but keep listening: the consumer gets the final
        ``finish_reason="abort"`` update (a per-request timeout)."""
        if not self.finished:
            self._engine.abort(self.request_id)

    def _close(self) -> None:
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()


class AsyncEngine:
    """Runs an ``Engine`` on its own thread and serves it to coroutines.

    Attributes:
        compiles_grammars: whether the engine compiles a request's structured-output grammar
            off its step loop by itself (the engine core process does); if not, the server
            compiles it in its input pool first, so the step finds it cached.

    Args:
        engine: a constructed ``mmcore.Engine``, or a no-argument function that builds one. A
            function is called on the engine thread by :meth:`start`, so one thread both builds
            and runs the engine: on a CPU a model built on one thread and run on another pays
            for two OpenMP thread teams (measured 1.7x slower per step on a 2-core machine).
        input_workers: threads for input processing (media decode, image processor).
        thread_setup: called first on the engine thread (e.g. to pin it to compute cores).
    """

    def __init__(
        self,
        engine: Any,
        input_workers: int = 2,
        thread_setup: Callable[[], None] | None = None,
    ) -> None:
        self._thread_setup = thread_setup
        self._factory: Callable[[], Any] | None = engine if callable(engine) else None
        self.engine = None if self._factory is not None else engine
        self._ready = threading.Event()
        self.start_error: BaseException | None = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=input_workers, thread_name_prefix="mm-input")
        self._active: dict[str, _Active] = {}
        self._stats: dict[str, Any] = {}
        self._num_pending_inputs = 0
        self._pending_lock = threading.Lock()
        self._error: BaseException | None = None
        self.on_fatal: Callable[[], None] | None = None  # called once the engine thread failed
        self.compiles_grammars = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mm-engine", daemon=True)
        if self.engine is not None:
            self._publish_stats()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the engine thread; with an engine factory, wait until it has built the engine.

        Raises:
            Exception: whatever building the engine raised (also kept in ``start_error``).
        """
        self._thread.start()
        self._ready.wait()
        if self.start_error is not None:
            raise self.start_error

    def shutdown(self, timeout: float = 30.0) -> None:
        """Abort what is still running, stop the engine thread and the input pool."""
        if self._thread.is_alive():
            self._commands.put(("stop",))
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def error(self) -> BaseException | None:
        """What stopped the engine thread while serving (None while healthy)."""
        return self._error

    @property
    def is_running(self) -> bool:
        """True while the engine thread is alive and has not failed."""
        # The error is set before requests are failed, so no caller sees a failed engine run.
        return self._thread.is_alive() and not self._stopped.is_set() and self._error is None

    # ------------------------------------------------------------------ coroutine API
    async def run_in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking input work (media fetch, templating, processing) off the event loop."""
        with self._pending_lock:
            self._num_pending_inputs += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            with self._pending_lock:
                self._num_pending_inputs -= 1

    async def submit(
        self,
        request_id: str,
        processed: Any,
        params: SamplingParams,
        arrival_time: float | None = None,
    ) -> RequestStream:
        """Hand a processed prompt to the engine; wait until it is accepted.

        Args:
            request_id: unique id of the request.
            processed: a ``ProcessedPrompt`` from ``engine.inputs.process``.
            params: sampling parameters.
            arrival_time: when the HTTP request arrived (for latency metrics).

        Returns:
            The stream of its results.

        Raises:
            ValueError: the engine refused the request (e.g. the prompt is too long).
            EngineDeadError: the engine thread is not running.
        """
        if not self.is_running:
            raise EngineDeadError("the engine is not running")
        q: asyncio.Queue = asyncio.Queue()
        self._enqueue_add(request_id, processed, params, q)
        try:
            first = await self.next_item(q)
        except asyncio.CancelledError:
            self.abort(request_id)
            raise
        if isinstance(first, BaseException):
            raise first
        assert isinstance(first, _Accepted)
        return RequestStream(
            request_id=request_id,
            prompt_token_ids=processed.token_ids.tolist(),
            arrival_time=time.monotonic() if arrival_time is None else arrival_time,
            _queue=q,
            _engine=self,
        )

    def _enqueue_add(
        self, request_id: str, processed: Any, params: SamplingParams, q: asyncio.Queue
    ) -> None:
        """Queue the add command with the request's stream state (stop strings held back here,
        by the engine thread's dispatch); the engine thread registers it."""
        num = params.n
        hold_back = max((len(s) for s in params.stop_strings), default=1) - 1
        active = _Active(
            asyncio.get_running_loop(), q, hold_back, [0] * num, [0] * num, [False] * num
        )
        self._commands.put(("add", request_id, processed, params, active))

    async def next_item(self, q: asyncio.Queue) -> Any:
        """The next item the engine thread sent to ``q``; an EngineDeadError instead of
        waiting forever if the thread is gone and nothing more can come."""
        if not q.empty():
            return q.get_nowait()
        while True:
            try:
                return await asyncio.wait_for(q.get(), timeout=_LIVENESS_CHECK_S)
            except asyncio.TimeoutError:
                if not self._thread.is_alive() and q.empty():
                    return EngineDeadError("the engine has stopped")

    def abort(self, request_id: str) -> None:
        """Abort a request (thread-safe; unknown or finished ids are ignored)."""
        self._commands.put(("abort", request_id))

    def abort_all(self) -> None:
        """Abort every running request; their streams end with ``finish_reason="abort"``."""
        self._commands.put(("abort_all",))

    def stats(self) -> dict[str, Any]:
        """The latest engine counters, published by the engine thread after each step."""
        stats = dict(self._stats)
        stats["num_pending_inputs"] = self._num_pending_inputs
        return stats

    # ------------------------------------------------------------------ engine thread
    def _send(self, active: _Active, item: Any) -> None:
        # A closed event loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            active.loop.call_soon_threadsafe(active.queue.put_nowait, item)

    def _publish_stats(self) -> None:
        if self.engine is None:  # not built (its factory failed)
            return
        stats = dict(self.engine.stats())
        stats["num_active_requests"] = len(self._active)
        self._stats = stats

    def _abort(self, request_id: str) -> None:
        """Abort in the engine; a listening consumer sees ``finish_reason="abort"``."""
        active = self._active.pop(request_id, None)
        if active is not None:
            logger.info("request %s aborted", request_id)
        self.engine.abort_request(request_id)
        if active is not None:
            deltas = [
                CompletionDelta(i, "", [], None, "abort")
                for i, done in enumerate(active.done)
                if not done
            ]
            self._send(active, StreamUpdate(deltas, finished=True))

    def _handle(self, command: tuple) -> bool:
        """Apply one command; return False on stop."""
        kind = command[0]
        if kind == "stop":
            return False
        if kind == "abort":
            self._abort(command[1])
            return True
        if kind == "abort_all":
            for request_id in list(self._active):
                self._abort(request_id)
            return True
        _, request_id, processed, params, active = command
        try:
            self.engine.add_processed(request_id, processed, params)
        except Exception as exc:  # this request is refused; the engine thread goes on
            if not isinstance(exc, ValueError):
                logger.warning("request %s refused: %r", request_id, exc)
            self._send(active, exc)
            return True
        self._active[request_id] = active
        logger.debug("request %s added (%d prompt tokens)", request_id, len(processed.token_ids))
        self._send(active, _Accepted())
        return True

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued commands (waiting for one when idle); return False on stop."""
        try:
            command = self._commands.get(block=block, timeout=None)
        except queue.Empty:
            return True
        while True:
            if not self._handle(command):
                return False
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        # One wake-up of each event loop per step, however many requests it serves.
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, StreamUpdate]]] = {}
        for output in outputs:
            active = self._active.get(output.request_id)
            if active is None:
                continue
            if output.error is not None:
                logger.warning("request %s failed: %s", output.request_id, output.error)
                del self._active[output.request_id]
                self._send(active, RequestFailedError(output.error))
                continue
            update = output_update(active, output)
            if output.finished:
                del self._active[output.request_id]
            if update is not None:
                batches.setdefault(active.loop, []).append((active.queue, update))
        for loop, batch in batches.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, batch)

    def _engine_failed(self, error: BaseException) -> None:
        """Record the engine's fatal ``error``, fail every open stream, tell the server."""
        self._error = error
        self._fail_all(EngineDeadError(f"engine failure: {error!r}"))
        if self.on_fatal is not None:
            self.on_fatal()

    def _fail_all(self, exc: BaseException) -> None:
        for request_id, active in list(self._active.items()):
            self._send(active, exc)
            try:
                self.engine.abort_request(request_id)
            except Exception:  # the engine is already broken; keep failing the others
                logger.exception("abort after engine failure failed")
        self._active.clear()

    def _run(self) -> None:
        try:
            if self._thread_setup is not None:
                self._thread_setup()
            if self._factory is not None:
                self.engine = self._factory()
                self._publish_stats()
        except BaseException as exc:
            logger.exception("building the engine failed")
            self.start_error = exc
            self._stopped.set()
            return
        finally:
            self._ready.set()
        try:
            running = True
            while running:
                running = self._drain_commands(block=not self.engine.has_unfinished_requests())
                if running and self.engine.has_unfinished_requests():
                    self._dispatch(self.engine.step())
                self._publish_stats()
        except BaseException as exc:
            logger.exception("the engine thread failed")
            self._engine_failed(exc)
        finally:
            self._stopped.set()
            # Requests still running at shutdown end as aborted.
            for request_id in list(self._active):
                try:
                    self._abort(request_id)
                except Exception:
                    logger.exception("abort at shutdown failed")
            self._active.clear()
            self._publish_stats()
            # Fail commands that arrived too late.
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                if command[0] == "add":
                    self._send(command[4], EngineDeadError("the engine has stopped"))
