"""``ServerArgs``: the options of ``mmcore serve`` that are not Engine options, once.

Declared like :class:`mmcore.engine_args.EngineArgs` (one field per option, with its type,
default, help and allowed values); ``mmcore serve`` takes both sets. Kept free of server
imports so ``mmcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from mmcore.arg_utils import add_dataclass_args, check_fields, check_known, namespace_kwargs, option

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass
class ServerArgs:
    """How ``mmcore serve`` listens, whom it lets in and what media it accepts."""

    host: str = option("127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    port: int = option(8000, help="TCP port (0: any free port)")
    api_key: str | None = option(help="require 'Authorization: Bearer KEY' on /v1 routes")
    max_request_bytes: int = option(50 << 20, help="largest request body in bytes (413 above)")
    max_image_bytes: int = option(20 << 20, help="largest image fetched by URL, in bytes")
    media_fetch_timeout: float = option(10.0, help="seconds one image URL fetch may take")
    input_workers: int = option(2, help="threads for image and prompt processing")
    shutdown_timeout: float = option(
        30.0, help="on SIGTERM, seconds in-flight requests may run before they are aborted"
    )
    max_media_redirects: int = option(5, help="most redirects one image URL fetch follows")
    tool_call_parser: str | None = option(
        choices=("hermes", "qwen", "llama3_json"),
        help="how tool calls are found in the model's text (hermes/qwen: <tool_call> JSON "
        "blocks; llama3_json: a JSON reply); needed by --enable-auto-tool-choice",
    )
    enable_auto_tool_choice: bool = option(
        False,
        help='let the model decide whether to call a tool (tool_choice "auto", the default '
        "when a request has tools); needs --tool-call-parser",
    )
    max_waiting_requests: int | None = option(
        1024,
        help="requests that may wait beyond the running batch; more are refused with 429 and "
        "Retry-After (0: none may wait)",
    )
    allow_special_tokens_in_prompts: bool = option(
        False,
        help="let /v1/completions string prompts carry control tokens such as </s> (default: "
        "typed special tokens are plain text)",
    )
    max_request_pixels: int | None = option(
        help="most image pixels (width x height, summed) in one request, checked from image "
        "headers before any decoding (default: 128M)"
    )
    media_processes: int = option(
        2,
        help="worker processes that decode and process images, so that work never holds the "
        "server's GIL (0: input threads do it in the server process)",
    )
    engine_core_process: bool | None = option(
        help="run the engine (scheduler, model runner, detokenizer) in its own process, so "
        "HTTP, JSON and streaming work never holds the engine's GIL (vLLM's "
        "VLLM_ENABLE_V1_MULTIPROCESSING; default: on for CUDA, off on CPU)",
    )
    cpu_placement: bool = option(
        True,
        help="on a CPU host, pin the engine's compute threads to all cores of the process but "
        "one, keep that one for HTTP and input work, and let OpenMP wait passively",
    )
    metrics_need_api_key: bool = option(False, help="/metrics needs the API key too")
    max_header_bytes: int = option(
        16 << 10, help="largest request line + headers in bytes (431 above)"
    )
    uvicorn_log_level: str = option(
        "info", choices=LOG_LEVELS, flags=("--log-level",), help="log level of the server"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")
        if self.max_media_redirects < 0:
            raise ValueError(f"max_media_redirects must be >= 0, got {self.max_media_redirects}")
        if self.max_waiting_requests is not None and self.max_waiting_requests < 0:
            raise ValueError(f"max_waiting_requests must be >= 0, got {self.max_waiting_requests}")
        if self.media_processes < 0:
            raise ValueError(f"media_processes must be >= 0, got {self.media_processes}")
        if self.max_request_pixels is not None and self.max_request_pixels < 1:
            raise ValueError(f"max_request_pixels must be >= 1, got {self.max_request_pixels}")
        for name in ("max_request_bytes", "max_image_bytes", "input_workers", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("media_fetch_timeout", "shutdown_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ServerArgs:
        """Build from keyword arguments; TypeError names an unknown one, ValueError a bad value."""
        check_known(cls, kwargs, "ServerArgs")
        return cls(**kwargs)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        """Add every server option to ``parser`` as a group."""
        add_dataclass_args(parser.add_argument_group("server options"), ServerArgs)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        """The ServerArgs of a parsed command line (options not given keep their defaults)."""
        return cls(**namespace_kwargs(args, cls))
