"""The OpenAI-compatible HTTP server: routes, app assembly, and running it with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
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
from mmcore.executor.errors import WorkerFailedError
from mmcore.server.async_engine import AsyncEngine
from mmcore.server.errors import APIError, install_error_handlers
from mmcore.server.media_fetch import MediaPolicy
from mmcore.server.metrics import CONTENT_TYPE, ServerMetrics
from mmcore.server.middleware import GuardMiddleware
from mmcore.server.protocol import ChatCompletionRequest, CompletionRequest
from mmcore.server.serving_chat import create_chat_completion
from mmcore.server.serving_common import ServerState
from mmcore.server.serving_completions import create_completion
from mmcore.server.serving_tokenize import detokenize, tokenize
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

    def __post_init__(self) -> None:
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("enable_auto_tool_choice needs a tool_call_parser")
        if self.tool_call_parser is not None:
            get_tool_parser(self.tool_call_parser)  # an unknown name fails at start-up


def build_app(engine: Any, config: ServerConfig) -> FastAPI:
    """Assemble the FastAPI app around an ``Engine``; the engine thread runs during its lifespan.

    Args:
        engine: a constructed ``mmcore.Engine``, or a no-argument function that builds one on
            the engine thread at start-up (see :class:`AsyncEngine`).
        config: the server options.

    Returns:
        The app; ``app.state.server`` is its :class:`ServerState`.
    """
    async_engine = AsyncEngine(engine, input_workers=config.input_workers)
    state = ServerState(
        engine=async_engine,
        metrics=ServerMetrics(async_engine.stats, config.model_names[0]),
        model_names=list(config.model_names),
        media=config.media,
        created=int(time.time()),
        tool_call_parser=config.tool_call_parser if config.enable_auto_tool_choice else None,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        async_engine.start()
        try:
            yield
        finally:
            async_engine.shutdown(timeout=config.shutdown_timeout_s)

    app = FastAPI(title="mmcore", lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    app.add_middleware(
        GuardMiddleware,
        metrics=state.metrics,
        max_request_bytes=config.max_request_bytes,
        api_key=config.api_key,
    )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, raw_request: Request) -> Response:
        return await create_chat_completion(state, body, raw_request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, raw_request: Request) -> Response:
        return await create_completion(state, body, raw_request)

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
            )
        )
        self._engine: AsyncEngine = app.state.server.engine
        self._abort_after_s = config.shutdown_timeout_s

    async def on_tick(self, counter: int) -> bool:
        # A failed tensor-parallel worker cannot be recovered in-process: after answering 503
        # the server exits (non-zero, see run_server) so that a supervisor restarts it.
        if isinstance(self._engine.error, WorkerFailedError):
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self._abort_after_s, self._engine.abort_all)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


def _uvicorn_server(app: FastAPI, config: ServerConfig) -> uvicorn.Server:
    return _GracefulServer(app, config)


def run_server(engine: Any, config: ServerConfig) -> None:
    """Serve until SIGINT/SIGTERM: then stop accepting, let in-flight requests finish (up to
    ``shutdown_timeout_s``, then abort them), stop the engine thread, and return.

    Raises:
        WorkerFailedError: a tensor-parallel worker failed (requests got 503; the server
            stopped so that a supervisor restarts it).
    """
    app = build_app(engine, config)
    server = _uvicorn_server(app, config)
    # uvicorn re-raises the signal it caught after a graceful shutdown; a no-op handler
    # underneath turns that into a normal return (exit status 0).
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    start_error = app.state.server.engine.start_error
    if start_error is not None:  # uvicorn logged it and exited; the caller gets it too
        raise start_error
    if isinstance(app.state.server.engine.error, WorkerFailedError):
        raise app.state.server.engine.error


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
