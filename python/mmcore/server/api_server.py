"""The OpenAI-compatible HTTP server: routes, app assembly, and running it with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

import mmcore
from mmcore.engine.cpu_placement import CpuPlacement, pin_compute_thread, pin_current_thread
from mmcore.executor.errors import WorkerFailedError
from mmcore.listen_socket import bind_socket
from mmcore.multimodal.media_processes import MediaProcessPool
from mmcore.server.async_engine import AsyncEngine, EngineDeadError
from mmcore.server.engine_core_client import EngineCoreClient
from mmcore.server.errors import APIError, install_error_handlers
from mmcore.server.media_fetch import MediaPolicy
from mmcore.server.metrics import CONTENT_TYPE, ServerMetrics
from mmcore.server.middleware import GuardMiddleware
from mmcore.server.overload import AdmissionControl
from mmcore.server.protocol import ChatCompletionRequest, CompletionRequest
from mmcore.server.serving_chat import create_chat_completion
from mmcore.server.serving_common import ServerState
from mmcore.server.serving_completions import create_completion
from mmcore.server.serving_tokenize import detokenize, tokenize
from mmcore.server.serving_transcription import create_transcription
from mmcore.server.tool_parsers import get_tool_parser
from mmcore.server_args import ServerArgs

logger = logging.getLogger("mmcore.server")


@dataclass
class ServerConfig:
    """How the server listens and what it accepts.

    Attributes:
        host: address to bind (loopback by default).
        port: TCP port (0: any free port).
        model_names: names clients may use for the model (first one is reported).
        api_key: when set, ``/v1/*`` needs ``Authorization: Bearer <api_key>``.
        max_request_bytes: largest request body (413 beyond).
        media: where images may come from.
        input_workers: threads for media and prompt processing.
        shutdown_timeout_s: on SIGTERM, how long in-flight requests may run before being aborted.
        log_level: uvicorn's log level.
        tool_call_parser: how tool calls are found in free text (``hermes``/``qwen``,
            ``llama3_json``); needed for ``tool_choice="auto"``.
        enable_auto_tool_choice: let the model decide whether to call a tool
            (``tool_choice="auto"``, the default when a request has tools).
        allow_special_tokens_in_prompts: completion string prompts may carry control tokens
            (default: special token strings typed in them are tokenized as plain text).
        max_waiting_requests: requests that may wait beyond the running batch; more get 429
            with ``Retry-After`` (None: no limit).
        metrics_need_api_key: ``/metrics`` needs the API key too.
        max_header_bytes: largest request head (request line + headers); 431 beyond.
        max_request_pixels: most image pixels in one request, checked from image headers
            before decoding (None: the engine's default).
        media_processes: worker processes that decode and process images (0: the input
            threads do, in the server process).
        cpu_placement: on a CPU host, the cores of the engine thread (compute) and of the
            HTTP and input threads (None: no pinning).
        engine_core_process: run the engine in a spawned engine core process (the engine
            argument must then be a picklable function that builds it); HTTP work then never
            shares the engine's GIL.
    """

    # Defaults come from the server's options (mmcore.server_args), their one home.
    host: str = ServerArgs.host
    port: int = ServerArgs.port
    model_names: list[str] = field(default_factory=lambda: ["default"])
    api_key: str | None = ServerArgs.api_key
    max_request_bytes: int = ServerArgs.max_request_bytes
    media: MediaPolicy = field(default_factory=MediaPolicy)
    input_workers: int = ServerArgs.input_workers
    shutdown_timeout_s: float = ServerArgs.shutdown_timeout
    log_level: str = ServerArgs.uvicorn_log_level
    tool_call_parser: str | None = ServerArgs.tool_call_parser
    enable_auto_tool_choice: bool = ServerArgs.enable_auto_tool_choice
    allow_special_tokens_in_prompts: bool = ServerArgs.allow_special_tokens_in_prompts
    max_waiting_requests: int | None = ServerArgs.max_waiting_requests
    metrics_need_api_key: bool = ServerArgs.metrics_need_api_key
    max_header_bytes: int = ServerArgs.max_header_bytes
    max_request_pixels: int | None = ServerArgs.max_request_pixels
    media_processes: int = 0
    cpu_placement: CpuPlacement | None = None
    engine_core_process: bool = False

    def __post_init__(self) -> None:
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("enable_auto_tool_choice needs a tool_call_parser")
        if self.tool_call_parser is not None:
            get_tool_parser(self.tool_call_parser)  # an unknown name fails at start-up


def build_app(engine: Any, config: ServerConfig) -> FastAPI:
    """Assemble the FastAPI app around an ``Engine``; the engine thread (or engine core
    process) runs during its lifespan.

    Args:
        engine: a constructed ``mmcore.Engine``, or a no-argument function that builds one on
            the engine thread at start-up (see :class:`AsyncEngine`); with
            ``config.engine_core_process`` a picklable such function (e.g.
            ``functools.partial(Engine, path, seed=0)``), called in the core process.
        config: the server options.

    Returns:
        The app; ``app.state.server`` is its :class:`ServerState`.
    """
    placement = config.cpu_placement
    if config.engine_core_process:
        async_engine: AsyncEngine = EngineCoreClient(
            engine,
            input_workers=config.input_workers,
            core_setup=functools.partial(pin_compute_thread, placement) if placement else None,
        )
    else:
        async_engine = AsyncEngine(
            engine,
            input_workers=config.input_workers,
            thread_setup=(lambda: pin_compute_thread(placement)) if placement else None,
        )
    state = ServerState(
        engine=async_engine,
        metrics=ServerMetrics(async_engine.stats, config.model_names[0]),
        model_names=list(config.model_names),
        media=config.media,
        created=int(time.time()),
        tool_call_parser=config.tool_call_parser if config.enable_auto_tool_choice else None,
        allow_special_tokens_in_prompts=config.allow_special_tokens_in_prompts,
        admission=AdmissionControl(1, config.max_waiting_requests),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if placement is not None:  # the event loop, and the threads it starts, on I/O cores
            pin_current_thread(placement.io_cores)
        async_engine.start()
        state.admission.max_running = async_engine.engine.config.max_num_seqs
        inputs = async_engine.engine.inputs
        if config.max_request_pixels is not None:
            inputs.budget.max_request_pixels = config.max_request_pixels
        try:
            if config.media_processes > 0:
                inputs.media_pool = MediaProcessPool(
                    inputs.processor,
                    config.media_processes,
                    model_id=inputs.model_id,
                    mm_processor_kwargs=inputs.mm_processor_kwargs,
                    max_image_pixels=inputs.media_options.max_image_pixels,
                    allowed_local_media_path=inputs.media_options.allowed_local_media_path,
                )
                # Ready only once the workers are: else the first image request waits for them.
                await asyncio.to_thread(inputs.media_pool.warm_up)
            yield
        finally:
            async_engine.shutdown(timeout=config.shutdown_timeout_s)
            if inputs.media_pool is not None:
                inputs.media_pool.shutdown()
                inputs.media_pool = None

    app = FastAPI(title="mmcore", lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    app.add_middleware(
        GuardMiddleware,
        metrics=state.metrics,
        max_request_bytes=config.max_request_bytes,
        api_key=config.api_key,
        metrics_need_api_key=config.metrics_need_api_key,
        max_header_bytes=config.max_header_bytes,
    )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw_request: Request) -> Response:
        return await create_chat_completion(state, body, raw_request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw_request: Request) -> Response:
        return await create_completion(state, body, raw_request)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(raw_request: Request) -> Response:
        return await create_transcription(state, raw_request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(raw_request: Request) -> Response:
        return await create_transcription(state, raw_request, "translate")

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        data = [
            {
                "id": name,
                "object": "model",
                "created": state.created,
                "owned_by": "mmcore",
                "max_model_len": async_engine.engine.max_model_len,
            }
            for name in state.model_names
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if async_engine.is_running else 503)

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        return Response(status_code=200 if async_engine.is_running else 503)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": mmcore.__version__})

    @app.post("/tokenize")
    async def tokenize_route(raw_request: Request) -> Response:
        return await tokenize(state, await _json_body(raw_request))

    @app.post("/detokenize")
    async def detokenize_route(raw_request: Request) -> Response:
        return await detokenize(state, await _json_body(raw_request))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    return app


async def _json_body(raw_request: Request) -> Any:
    try:
        return await raw_request.json()
    except ValueError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", "invalid_json") from exc


# Time left after aborting in-flight requests for their streams to send the final chunks.
_ABORT_GRACE_S = 5.0


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, plus: requests still running ``shutdown_timeout_s`` after shutdown
    began are aborted, so their clients get a final ``finish_reason="abort"`` chunk rather
    than a cut connection."""

    def __init__(self, app: FastAPI, config: ServerConfig) -> None:
        super().__init__(
            uvicorn.Config(
                app,
                host=config.host,
                port=config.port,
                log_level=config.log_level,
                timeout_graceful_shutdown=config.shutdown_timeout_s + _ABORT_GRACE_S,
                lifespan="on",
                # Above the middleware's 431 limit, so clients normally get a JSON error body.
                h11_max_incomplete_event_size=2 * config.max_header_bytes,
            )
        )
        self._engine: AsyncEngine = app.state.server.engine
        self._abort_after_s = config.shutdown_timeout_s
        # An engine that fails for good takes the server down, so a supervisor restarts it.
        self._engine.on_fatal = self._exit_on_engine_failure

    def _exit_on_engine_failure(self) -> None:
        logger.error("the engine failed for good; shutting the server down")
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self._abort_after_s, self._engine.abort_all)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def _uvicorn_server(app: FastAPI, config: ServerConfig) -> uvicorn.Server:
    return _GracefulServer(app, config)


def run_server(engine: Any, config: ServerConfig, sock: socket.socket | None = None) -> None:
    """Serve until SIGINT/SIGTERM: then stop accepting, let in-flight requests finish (up to
    ``shutdown_timeout_s``, then abort them), stop the engine thread, and return.

    Args:
        engine: an Engine or a function building one (built after the port is bound).
        config: the server options.
        sock: a socket from :func:`bind_socket` (default: bound here, before the engine).

    Raises:
        OSError: the port cannot be bound.
        WorkerFailedError: a tensor-parallel worker failed (requests got 503; the server
            stopped so that a supervisor restarts it).
        EngineDeadError: the engine failed for good otherwise while serving (exit non-zero).
    """
    sock = sock or bind_socket(config.host, config.port)
    app = build_app(engine, config)
    server = _uvicorn_server(app, config)
    # uvicorn re-raises the signal it caught after a graceful shutdown; a no-op handler
    # underneath turns that into a normal return (exit status 0).
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    async_engine = app.state.server.engine
    if async_engine.start_error is not None:  # uvicorn logged it and exited; the caller too
        raise async_engine.start_error
    if isinstance(async_engine.error, WorkerFailedError):  # it names the failed rank
        raise async_engine.error
    if async_engine.error is not None:
        raise EngineDeadError(f"the engine failed: {async_engine.error!r}")


class BackgroundServer:
    """A server on a loopback port in a background thread (tests, notebooks).

    Args:
        engine: a constructed ``mmcore.Engine`` or a function building one (see
            :func:`build_app`).
        config: server options; ``host`` and ``port`` are replaced by a free loopback port.
        startup_timeout_s: how long :meth:`start` waits for the server to listen.
    """

    def __init__(self, engine: Any, config: ServerConfig, startup_timeout_s: float = 30.0) -> None:
        self.app = build_app(engine, config)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = _uvicorn_server(self.app, config)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._startup_timeout_s = startup_timeout_s

    def _serve(self) -> None:
        # uvicorn exits with SystemExit when start-up fails (the engine did not build); the
        # error stays in state.engine.start_error and start() reports it.
        with contextlib.suppress(SystemExit):
            self._server.run(sockets=[self._sock])

    @property
    def state(self) -> ServerState:
        return self.app.state.server

    def start(self) -> BackgroundServer:
        """Start serving; return once the server listens.

        Raises:
            RuntimeError: the server did not start in time, or its engine failed to build
                (that error is chained and kept in ``state.engine.start_error``).
        """
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start") from (
                    self.state.engine.start_error
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shut down gracefully and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
