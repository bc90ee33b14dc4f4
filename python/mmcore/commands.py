"""``mmcore generate`` and ``mmcore serve``."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging

from mmcore.engine_args import EngineArgs
from mmcore.server_args import ServerArgs


def engine_args_or_exit(args: argparse.Namespace) -> EngineArgs:
    """The command line's EngineArgs; a bad combination exits with one line, not a traceback."""
    try:
        return EngineArgs.from_cli_args(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def build_engine_or_exit(engine_args: EngineArgs):
    """An Engine; a model that cannot be found or loaded exits with one line."""
    from mmcore import Engine

    try:
        return Engine.from_engine_args(engine_args)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None


def add_generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="answer one prompt (with images) and print the reply",
        description="Answer one chat prompt, optionally about images, and print the reply.",
    )
    p.add_argument("prompt", help="the user's message")
    p.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="an image (repeatable)"
    )
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    EngineArgs.add_cli_args(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from mmcore import SamplingParams

    parts: list[dict] = []
    for path in args.image:
        try:
            image = Image.open(path)
            image.load()
        except OSError as exc:
            raise SystemExit(f"cannot read image {path!r}: {exc}") from exc
        parts.append({"type": "image", "image": image.convert("RGB")})
    parts.append({"type": "text", "text": args.prompt})
    engine = build_engine_or_exit(engine_args_or_exit(args))
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens
    )
    try:
        output = engine.chat([{"role": "user", "content": parts}], params, use_tqdm=False)[0]
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(output.outputs[0].text.strip())
    return 0


def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, "
        "/v1/completions, /v1/models, /health, /metrics). `mmcore serve MODEL` and "
        "`mmcore serve --model MODEL` are the same.",
    )
    p.add_argument(
        "model_tag",
        nargs="?",
        metavar="MODEL",
        help="checkpoint folder or hub id (same as --model; default: the demo model, mmcore-demo)",
    )
    ServerArgs.add_cli_args(p)
    EngineArgs.add_cli_args(p)
    p.set_defaults(func=cmd_serve)


def serve_engine_args(args: argparse.Namespace) -> EngineArgs:
    """The EngineArgs of a ``serve`` command line: ``serve X`` is ``serve --model X``."""
    if args.model_tag is not None:
        if args.model is not None and args.model != args.model_tag:
            raise SystemExit(
                f"error: the model is given twice, as {args.model_tag!r} and --model {args.model!r}"
            )
        args.model = args.model_tag
    return engine_args_or_exit(args)


def server_config(engine_args: EngineArgs, server_args: ServerArgs, model_dir: str):
    """The server's runtime configuration from its options and the engine's.

    Args:
        engine_args: the engine options (served names, local media folder, image limit).
        server_args: the server options.
        model_dir: the model's local folder (its name when neither --served-model-name nor
            a model was given).
    """
    from mmcore.demo import DEMO_MODEL_NAME
    from mmcore.server import MediaPolicy, ServerConfig

    names = engine_args.served_model_name or [engine_args.model or DEMO_MODEL_NAME]
    return ServerConfig(
        host=server_args.host,
        port=server_args.port,
        model_names=list(names),
        api_key=server_args.api_key,
        max_request_bytes=server_args.max_request_bytes,
        media=MediaPolicy(
            allowed_domains=list(engine_args.allowed_media_domains or []),
            allowed_local_media_path=engine_args.allowed_local_media_path,
            max_bytes=server_args.max_image_bytes,
            timeout_s=server_args.media_fetch_timeout,
            max_redirects=server_args.max_media_redirects,
            max_images=(engine_args.limit_mm_per_prompt or {}).get("image"),
        ),
        input_workers=server_args.input_workers,
        shutdown_timeout_s=server_args.shutdown_timeout,
        log_level=server_args.uvicorn_log_level,
        tool_call_parser=server_args.tool_call_parser,
        enable_auto_tool_choice=server_args.enable_auto_tool_choice,
        allow_special_tokens_in_prompts=server_args.allow_special_tokens_in_prompts,
        max_waiting_requests=server_args.max_waiting_requests,
        metrics_need_api_key=server_args.metrics_need_api_key,
        max_header_bytes=server_args.max_header_bytes,
        max_request_pixels=server_args.max_request_pixels,
        media_processes=server_args.media_processes,
    )


def _on_cpu(args: argparse.Namespace) -> bool:
    """Whether ``mmcore serve`` runs on the CPU (checked without importing torch)."""
    import os

    device = str(getattr(args, "device", "auto") or "auto")
    return device == "cpu" or (device == "auto" and not os.path.exists("/dev/nvidiactl"))


def engine_core_process(args: argparse.Namespace, server_args: ServerArgs) -> bool:
    """Whether ``mmcore serve`` runs its engine in an engine core process: as asked, else on
    CUDA hosts (HTTP work then never holds the engine's GIL) and not on CPU hosts (where the
    engine thread is pinned to the compute cores and the cores are few)."""
    if server_args.engine_core_process is not None:
        return server_args.engine_core_process
    return not _on_cpu(args)


def _cpu_placement(args: argparse.Namespace, server_args: ServerArgs):
    """The CPU placement of ``mmcore serve`` on a CPU host (None on a GPU host or when off);
    sets OpenMP's environment, so it runs before torch is imported."""
    from mmcore.engine.cpu_placement import plan_cpu_placement, set_openmp_environment

    if not (server_args.cpu_placement and _on_cpu(args)):
        return None
    placement = plan_cpu_placement()
    set_openmp_environment(placement)
    return placement


def cmd_serve(args: argparse.Namespace) -> int:
    from mmcore.engine.cpu_placement import set_gpu_host_threads
    from mmcore.listen_socket import bind_socket

    try:
        server_args = ServerArgs.from_cli_args(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    try:  # the port first: "in use" is one line now, not after torch and the model loaded
        sock = bind_socket(server_args.host, server_args.port)
    except OSError as exc:
        raise SystemExit(f"error: {exc.strerror}") from None
    placement = _cpu_placement(args, server_args)  # before torch loads OpenMP
    host_threads = None if _on_cpu(args) else set_gpu_host_threads()  # before torch, too
    from mmcore import Engine
    from mmcore.executor.errors import WorkerFailedError
    from mmcore.hub import resolve_model_path
    from mmcore.server import run_server
    from mmcore.server.async_engine import EngineDeadError

    engine_args = serve_engine_args(args)
    logging.basicConfig(
        level=server_args.uvicorn_log_level.upper().replace("TRACE", "DEBUG"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if host_threads:
        logging.getLogger("mmcore.engine").info(host_threads)
    # Find (or download) the model now, so a missing one is one line before the server starts.
    try:
        local_dir = resolve_model_path(
            engine_args.model,
            revision=engine_args.revision,
            download_dir=engine_args.download_dir,
            with_weights=engine_args.load_format != "dummy",
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    config = server_config(engine_args, server_args, local_dir)
    config.cpu_placement = placement
    config.engine_core_process = engine_core_process(args, server_args)
    engine_args = dataclasses.replace(engine_args, model=local_dir)
    try:
        # Built on the engine thread (or in the engine core process) that runs it: one OpenMP
        # team on CPU hosts. A partial, not a lambda: the core process gets it pickled.
        run_server(functools.partial(Engine.from_engine_args, engine_args), config, sock)
    except (ValueError, FileNotFoundError, EngineDeadError, WorkerFailedError) as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0
