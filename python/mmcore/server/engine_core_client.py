"""The server side of the engine core process: :class:`AsyncEngine`'s API over a pipe.

    event loop ──submit/abort──► command queue ──sender thread──► pipe ──► engine core process
    event loop ◄─call_soon_threadsafe── reader thread ◄── one message per step ◄──┘

``engine`` is an :class:`~mmcore.engine.engine_front.EngineFront` (tokenizer, processor, input
processing) built from what the core reports once it is ready, so the serving modules use it
as they use an in-process Engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import threading
from collections.abc import Callable
from typing import Any

from mmcore.sampling_params import SamplingParams
from mmcore.server.async_engine import (
    AsyncEngine,
    EngineDeadError,
    RequestFailedError,
    _Accepted,
    _deliver,
)
from mmcore.server.engine_core import (
    CoreSpec,
    abort_update,
    dumps_commands,
    loads,
    run_engine_core,
    stream_update,
)
from mmcore.server.stream_updates import _Active

logger = logging.getLogger("mmcore.server")

_POLL_S = 0.5  # how often the reader checks that the core process is alive
_STOP_GRACE_S = 5.0  # after the stop request: how long the core may take to exit


class _CoreFailed(Exception):
    """The core reported a fatal engine error (carried as its cause)."""


class EngineCoreClient(AsyncEngine):
    """Serves an Engine that runs in a spawned engine core process.

    Args:
        engine: a picklable no-argument callable that builds the Engine (in the core), e.g.
            ``functools.partial(Engine.from_engine_args, engine_args)``.
        input_workers: threads for input processing (media decode, image processor).
        core_setup: a picklable callable run first in the core (e.g. CPU pinning).
    """

    def __init__(
        self,
        engine: Callable[[], Any],
        input_workers: int = 2,
        core_setup: Callable[[], None] | None = None,
    ) -> None:
        if not callable(engine):
            raise TypeError("the engine core process needs a function that builds the Engine")
        super().__init__(engine, input_workers=input_workers)
        self.compiles_grammars = True  # on a core thread; a bad grammar comes back refused
        self._core_setup = core_setup
        self._process: Any = None
        self._conn: Any = None
        self._thread = threading.Thread(target=self._read, name="mm-core-reader", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="mm-core-sender", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Spawn the core, wait until it built the engine, build the input front.

        Raises:
            Exception: whatever building the engine (or the front) raised; also kept in
                ``start_error``.
        """
        from mmcore.engine.engine_front import EngineFront

        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        spec = CoreSpec(
            self._factory, self._core_setup, os.getpid(), logging.getLogger().getEffectiveLevel()
        )
        self._process = ctx.Process(
            target=run_engine_core, args=(spec, child_conn), name="mmcore-engine-core"
        )
        try:
            try:
                self._process.start()
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise TypeError(
                    "the engine core process needs a picklable function that builds the "
                    "Engine, e.g. functools.partial(Engine, model_path, seed=0) (not a lambda "
                    f"or a local function): {exc}"
                ) from exc
            child_conn.close()
            self._conn = parent_conn
            message = self._first_message()
            if message[0] == "start_error":
                raise message[1]
            _, front_config, stats = message
            self.engine = EngineFront(front_config)
            self._stats = stats
        except BaseException as exc:
            self.start_error = exc
            self._stopped.set()
            parent_conn.close()  # a core waiting for commands sees the pipe close and exits
            self._stop_process(timeout=_STOP_GRACE_S)
            raise
        logger.info("engine core process %d ready", self._process.pid)
        self._sender.start()
        self._thread.start()

    def _first_message(self) -> tuple:
        while not self._conn.poll(_POLL_S):
            if not self._process.is_alive():
                raise RuntimeError(
                    f"the engine core process exited (code {self._process.exitcode}) "
                    "before the engine was built"
                )
        try:
            return loads(self._conn.recv_bytes())
        except EOFError:
            self._process.join(_STOP_GRACE_S)
            raise RuntimeError(
                f"the engine core process exited (code {self._process.exitcode}) "
                "before the engine was built"
            ) from None

    def _stop_process(self, timeout: float) -> None:
        """Wait for the core to exit; kill it if it does not (it ignores SIGTERM)."""
        process = self._process
        if process is None or process.pid is None:
            return
        process.join(timeout)
        if process.is_alive():
            logger.warning("the engine core process did not stop in %.0f s; killing it", timeout)
            process.kill()
            process.join(_STOP_GRACE_S)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Abort what is still running, stop the core process, the threads and the pool."""
        if self._thread.is_alive():
            self._commands.put(("stop",))
            self._thread.join(timeout)
        self._commands.put(None)  # ends the sender
        if self._sender.is_alive():
            self._sender.join(_STOP_GRACE_S)
        self._stop_process(timeout=_STOP_GRACE_S)
        if self._conn is not None:
            self._conn.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def core_pid(self) -> int | None:
        """The engine core process's id (None before start)."""
        return None if self._process is None else self._process.pid

    # ------------------------------------------------------------------ coroutine API
    def _enqueue_add(
        self, request_id: str, processed: Any, params: SamplingParams, q: asyncio.Queue
    ) -> None:
        """Register the request's stream and queue the add for the core (which holds stop
        strings back next to its detokenizer: nothing is held back here)."""
        num = params.n
        self._active[request_id] = _Active(
            asyncio.get_running_loop(), q, 0, [0] * num, [0] * num, [False] * num
        )
        self._commands.put(("add", request_id, processed, params))

    # ------------------------------------------------------------------ threads
    def _send_loop(self) -> None:
        """Send queued commands, all that piled up in one message."""
        while True:
            command = self._commands.get()
            batch = []
            while command is not None:
                batch.append(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self._conn.send_bytes(dumps_commands(batch))
                except (OSError, ValueError):  # the core is gone; the reader reports it
                    return
            if command is None:
                return

    def _apply_step(self, events: list, updates: list, failures: list, stats: dict) -> None:
        for event in events:
            kind, request_id = event[0], event[1]
            if kind == "accepted":
                active = self._active.get(request_id)
                if active is not None:
                    self._send(active, _Accepted())
                continue
            active = self._active.pop(request_id, None)
            if active is None:
                continue
            if kind == "refused":
                exc = event[2]
                if not isinstance(exc, ValueError):
                    logger.warning("request %s refused: %r", request_id, exc)
                self._send(active, exc)
            else:  # aborted
                logger.info("request %s aborted", request_id)
                self._send(active, abort_update(event[2]))
        batches: dict[asyncio.AbstractEventLoop, list] = {}
        for request_id, finished, prompt_logprobs, fields in updates:
            active = self._active.get(request_id)
            if active is None:
                continue
            if finished:
                del self._active[request_id]
            update = stream_update(finished, prompt_logprobs, fields)
            batches.setdefault(active.loop, []).append((active.queue, update))
        for request_id, error in failures:
            active = self._active.pop(request_id, None)
            if active is not None:
                logger.warning("request %s failed: %s", request_id, error)
                self._send(active, RequestFailedError(error))
        for loop, batch in batches.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                loop.call_soon_threadsafe(_deliver, batch)
        stats["num_active_requests"] = len(self._active)
        self._stats = stats

    def _read(self) -> None:
        """The reader thread: dispatch each step's news until the core stops or dies."""
        try:
            while True:
                if not self._conn.poll(_POLL_S):
                    if not self._process.is_alive():
                        raise EOFError
                    continue
                message = loads(self._conn.recv_bytes())
                if message[0] == "step":
                    self._apply_step(*message[1:])
                elif message[0] == "fatal":
                    raise _CoreFailed() from message[1]
                else:  # stopped
                    break
        except BaseException as exc:
            if isinstance(exc, _CoreFailed):
                error = exc.__cause__
            elif isinstance(exc, (EOFError, OSError)):
                self._process.join(_STOP_GRACE_S)
                error = RuntimeError(
                    f"the engine core process died (exit code {self._process.exitcode})"
                )
            else:
                logger.exception("the engine core reader failed")
                error = exc
            logger.error("the engine failed: %r", error)
            self._engine_failed(error)
        finally:
            self._stopped.set()
            self._fail_all(EngineDeadError("the engine has stopped"))
            self._commands.put(None)

    def _fail_all(self, exc: BaseException) -> None:
        for request_id in list(self._active):
            active = self._active.pop(request_id, None)
            if active is not None:
                self._send(active, exc)
