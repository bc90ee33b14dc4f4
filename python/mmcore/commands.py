"""``mmcore generate`` and ``mmcore serve``."""

from __future__ import annotations

import argparse
import logging

from mmcore.engine_args import add_engine_args, engine_kwargs, resolve_model


def add_generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="answer one prompt (with images) and print the reply",
        description="Answer one chat prompt, optionally about images, and print the reply.",
    )
    p.add_argument("prompt", help="the user's message")
    p.add_argument("--model", help="checkpoint folder (default: the demo model, mmcore-demo)")
    p.add_argument(
        "--image", action="append", default=[], metavar="PATH", help="an image (repeatable)"
    )
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    add_engine_args(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from mmcore import Engine, SamplingParams

    model = resolve_model(args.model)
    parts: list[dict] = []
    for path in args.image:
        try:
            image = Image.open(path)
            image.load()
        except OSError as exc:
            raise SystemExit(f"cannot read image {path!r}: {exc}") from exc
        parts.append({"type": "image", "image": image.convert("RGB")})
    parts.append({"type": "text", "text": args.prompt})
    engine = Engine(model, **engine_kwargs(args))
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
        "/v1/completions, /v1/models, /health, /metrics).",
    )
    p.add_argument(
        "model", nargs="?", help="checkpoint folder (default: the demo model, mmcore-demo)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--served-model-name",
        action="append",
        help="name clients use for the model (repeatable; default: the model argument, or "
        "mmcore-demo for the demo model)",
    )
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument(
        "--allowed-local-media-path", help="folder image file paths and file:// URLs may use"
    )
    p.add_argument(
        "--allowed-media-domains",
        nargs="*",
        default=[],
        metavar="HOST",
        help="hosts http(s) image URLs may point to (default: none)",
    )
    p.add_argument(
        "--max-request-bytes", type=int, default=50 << 20, help="largest request body (413 above)"
    )
    p.add_argument(
        "--max-image-bytes", type=int, default=20 << 20, help="largest image fetched by URL"
    )
    p.add_argument(
        "--media-fetch-timeout", type=float, default=10.0, help="seconds per image URL fetch"
    )
    p.add_argument(
        "--input-workers", type=int, default=2, help="threads for image and prompt processing"
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds in-flight requests may run before they are aborted",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level")
    add_engine_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from mmcore import Engine
    from mmcore.demo import DEMO_MODEL_NAME
    from mmcore.server import MediaPolicy, ServerConfig, run_server

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    model = resolve_model(args.model)
    kwargs = engine_kwargs(args)
    if args.allowed_local_media_path:
        kwargs["allowed_local_media_path"] = args.allowed_local_media_path
    limit = (args.limit_mm_per_prompt or {}).get("image")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        model_names=args.served_model_name or [args.model or DEMO_MODEL_NAME],
        api_key=args.api_key,
        max_request_bytes=args.max_request_bytes,
        media=MediaPolicy(
            allowed_domains=list(args.allowed_media_domains),
            allowed_local_media_path=args.allowed_local_media_path,
            max_bytes=args.max_image_bytes,
            timeout_s=args.media_fetch_timeout,
            max_images=limit,
        ),
        input_workers=args.input_workers,
        shutdown_timeout_s=args.shutdown_timeout,
        log_level=args.log_level,
    )
    # Built on the engine thread that runs it (one OpenMP team on CPU hosts).
    run_server(lambda: Engine(model, **kwargs), config)
    return 0
