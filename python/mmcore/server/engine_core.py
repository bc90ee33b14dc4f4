"""The engine core process: an ``Engine`` (scheduler, runner, detokenizer) in a spawned process.

    server process                                   engine core process
    EngineCoreClient ──("batch", [add/abort/...])──► _Core: apply commands, engine.step()
        reader thread ◄──("step", events, updates, failures, stats)── one message per step

The server process keeps its GIL for HTTP, JSON and SSE work; the core's GIL serves only the
engine. Each step's news is one pickled message: per request the stop-string-safe text and
token deltas (:func:`~mmcore.server.stream_updates.output_update`, computed here next to the
detokenizer, so the server never copies whole outputs; :func:`stream_update` rebuilds them),
plus the engine's stats.

The core exits when the server asks (``stop``), when its pipe closes, or when its parent
process is gone (a killed server leaves no orphan). It ignores SIGINT and SIGTERM: those go to
the server, which drains its requests first.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import logging
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from mmcore import _core
from mmcore.server.stream_updates import CompletionDelta, StreamUpdate, _Active, output_update

logger = logging.getLogger("mmcore.server")

_PARENT_POLL_S = 0.5  # how often the core checks that the server process is still there
_COMPILE_POLL_S = 0.005  # idle but a grammar compiles: how often the core looks at it


def _reduce_feature(feature: Any) -> tuple:
    mask = feature.embed_mask
    args = (
        feature.modality,
        feature.identifier,
        feature.offset,
        feature.length,
        feature.num_embeds,
        mask if len(mask) else None,  # empty: every position takes an embedding
    )
    return _core.MMFeature, args


class _CommandPickler(pickle.Pickler):
    """Pickles CPU tensors (processed pixels, audio features) as numpy arrays: a plain buffer
    copy, about 8x cheaper to load than torch's own tensor pickling (measured on a 336 px
    LLaVA image), which matters because the core loads every request's tensors."""

    def reducer_override(self, obj: Any) -> Any:
        if (
            isinstance(obj, torch.Tensor)
            and type(obj) is torch.Tensor
            and obj.device.type == "cpu"
            and obj.dtype in _NUMPY_DTYPES
            and not obj.requires_grad
        ):
            return torch.from_numpy, (obj.numpy(),)
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """Pickle a message (C++ placeholder features included)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def dumps_commands(commands: list) -> bytes:
    """Pickle commands for the core; tensors of processed prompts cross as numpy arrays."""
    buffer = io.BytesIO()
    _CommandPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(commands)
    return buffer.getvalue()


loads = pickle.loads
copyreg.pickle(_core.MMFeature, _reduce_feature)  # prompts carry their placeholder features
_NUMPY_DTYPES = {
    torch.float32,
    torch.float64,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
}


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a RuntimeError with its repr."""
    try:
        loads(dumps(exc))
        return exc
    except Exception:
        return RuntimeError(repr(exc))


@dataclass
class CoreSpec:
    """What the spawned core needs (pickled once, at spawn).

    Attributes:
        factory: builds the Engine (a picklable no-argument callable).
        setup: called first in the core (e.g. CPU pinning), or None.
        parent_pid: the server process; the core exits once it is gone.
        log_level: the server's root log level, applied in the core.
    """

    factory: Callable[[], Any]
    setup: Callable[[], None] | None
    parent_pid: int
    log_level: int = logging.WARNING


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def _stats(engine: Any, num_active: int) -> dict[str, Any]:
    stats = dict(engine.stats())
    stats["num_active_requests"] = num_active
    return stats


class _Core:
    """The core's loop: apply the server's commands, step, send each step's news."""

    def __init__(self, engine: Any, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        self.live: dict[str, _Active] = {}
        self.events: list[tuple] = []
        # Requests whose grammar compiles on a core thread first: inline it would stall the step.
        self.compiling: dict[str, tuple[Future, Any, Any]] = {}
        self._compile_pool: ThreadPoolExecutor | None = None
        # Commands read and unpickled on a thread of their own: a request's pixels load while
        # the step loop waits on the device, not in between steps.
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._receive, name="mm-core-receiver", daemon=True).start()

    def _receive(self) -> None:
        try:
            while True:
                self.commands.put(loads(self.conn.recv_bytes()))
        except (EOFError, OSError):  # the server is gone (or closed the pipe)
            self.commands.put(None)

    def _add(self, request_id: str, processed: Any, params: Any) -> None:
        if params.structured_outputs is None:
            self._admit(request_id, processed, params)
            return
        if self._compile_pool is None:
            self._compile_pool = ThreadPoolExecutor(1, thread_name_prefix="mm-grammar")
        compile_grammar = self.engine.structured_outputs.compile
        future = self._compile_pool.submit(compile_grammar, params.structured_outputs)
        self.compiling[request_id] = (future, processed, params)

    def _admit_compiled(self) -> None:
        """Add the requests whose grammar is compiled (cached now); refuse a bad grammar."""
        for request_id, (future, processed, params) in list(self.compiling.items()):
            if not future.done():
                continue
            del self.compiling[request_id]
            if future.exception() is not None:
                self.events.append(("refused", request_id, portable(future.exception())))
            else:
                self._admit(request_id, processed, params)

    def _admit(self, request_id: str, processed: Any, params: Any) -> None:
        try:
            self.engine.add_processed(request_id, processed, params)
        except Exception as exc:  # this request is refused; the core goes on
            self.events.append(("refused", request_id, portable(exc)))
            return
        hold_back = max((len(s) for s in params.stop_strings), default=1) - 1
        n = params.n
        self.live[request_id] = _Active(None, None, hold_back, [0] * n, [0] * n, [False] * n)
        self.events.append(("accepted", request_id))

    def _abort(self, request_id: str) -> None:
        compiling = self.compiling.pop(request_id, None)
        if compiling is not None:
            self.events.append(("aborted", request_id, list(range(compiling[2].n))))
            return
        active = self.live.pop(request_id, None)
        self.engine.abort_request(request_id)
        if active is not None:
            open_indices = [i for i, done in enumerate(active.done) if not done]
            self.events.append(("aborted", request_id, open_indices))

    def _handle(self, command: tuple) -> bool:
        """Apply one command; False on stop."""
        kind = command[0]
        if kind == "add":
            self._add(*command[1:])
        elif kind == "abort":
            self._abort(command[1])
        elif kind == "abort_all":
            for request_id in [*self.compiling, *self.live]:
                self._abort(request_id)
        elif kind == "stop":
            return False
        else:
            raise ValueError(f"unknown engine core command {kind!r}")
        return True

    def _apply_commands(self, idle: bool) -> bool:
        """Apply what the server sent (waiting for it when idle); False on stop."""
        try:
            if not idle:
                batch = self.commands.get_nowait()
            else:  # nothing to step: wait for a command (or, briefly, for a compiled grammar)
                batch = self.commands.get(timeout=_COMPILE_POLL_S if self.compiling else None)
            while True:
                if batch is None:
                    raise EOFError("the server closed the engine core's pipe")
                for command in batch:
                    if not self._handle(command):
                        return False
                batch = self.commands.get_nowait()
        except queue.Empty:
            return True

    def _updates(self, outputs: list) -> tuple[list, list]:
        """Each output's stream update (as the in-process dispatch builds it, as
        ``(request_id, finished, prompt_logprobs, delta fields)``), and failures."""
        updates, failures = [], []
        for output in outputs:
            active = self.live.get(output.request_id)
            if active is None:
                continue
            if output.error is not None:
                del self.live[output.request_id]
                failures.append((output.request_id, output.error))
                continue
            update = output_update(active, output)
            if output.finished:
                del self.live[output.request_id]
            if update is not None:
                # Plain tuples: about 7x cheaper to pickle here than the dataclasses.
                fields = [
                    (d.index, d.text, d.token_ids, d.logprobs, d.finish_reason)
                    for d in update.deltas
                ]
                updates.append((output.request_id, update.finished, update.prompt_logprobs, fields))
        return updates, failures

    def _send_step(self, updates: list, failures: list) -> None:
        stats = _stats(self.engine, len(self.live))
        message = ("step", self.events, updates, failures, stats)
        self.events = []
        self.conn.send_bytes(dumps(message))

    def run(self) -> None:
        """Serve until ``stop``; raises what the engine raised (fatal)."""
        running = True
        while running:
            running = self._apply_commands(idle=not self.engine.has_unfinished_requests())
            if running and self.compiling:
                self._admit_compiled()
            updates, failures = [], []
            stepped = running and self.engine.has_unfinished_requests()
            if stepped:
                updates, failures = self._updates(self.engine.step())
            if not running:  # requests still running at shutdown end as aborted
                for request_id in [*self.compiling, *self.live]:
                    self._abort(request_id)
            if stepped or self.events or not running:  # idle polls while compiling send nothing
                self._send_step(updates, failures)
        self.conn.send_bytes(dumps(("stopped",)))


def stream_update(finished: bool, prompt_logprobs: Any, fields: list[tuple]) -> StreamUpdate:
    """The :class:`StreamUpdate` of one request's entry of a step message."""
    return StreamUpdate([CompletionDelta(*f) for f in fields], finished, prompt_logprobs)


def abort_update(open_indices: list[int]) -> StreamUpdate:
    """The last update of an aborted request: ``finish_reason="abort"`` for open completions."""
    deltas = [CompletionDelta(i, "", [], None, "abort") for i in open_indices]
    return StreamUpdate(deltas, finished=True)


def run_engine_core(spec: CoreSpec, conn: Connection) -> None:
    """Entry point of the spawned core: build the engine, report ready, serve; exit non-zero
    after reporting a failure."""
    logging.basicConfig(level=spec.log_level, format="%(levelname)s %(name)s: %(message)s")
    # Ctrl-C reaches the whole process group, systemd's stop every process of the unit: the
    # server drains its requests and then stops the core, which must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(spec.parent_pid,), daemon=True).start()
    try:
        if spec.setup is not None:
            spec.setup()
        engine = spec.factory()
    except BaseException as exc:
        logger.exception("building the engine failed")
        conn.send_bytes(dumps(("start_error", portable(exc))))
        raise SystemExit(1) from None
    from mmcore.engine.engine_front import FrontConfig

    conn.send_bytes(dumps(("ready", FrontConfig.of(engine.config), _stats(engine, 0))))
    try:
        _Core(engine, conn).run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        raise SystemExit(1) from None  # the server is gone; nobody to report to
    except BaseException as exc:
        logger.exception("the engine core failed")
        with contextlib.suppress(OSError):
            conn.send_bytes(dumps(("fatal", portable(exc))))
        raise SystemExit(1) from None
    finally:
        with contextlib.suppress(Exception):  # stops tensor-parallel workers, if any
            engine.shutdown()
