"""``mmcore bench serve`` and ``mmcore bench offline``."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict

from mmcore.engine_args import EngineArgs


def _rate(value: str) -> float:
    rate = float(value)  # accepts "inf"
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"request rate must be > 0 or inf, got {value!r}")
    return rate


def _image_size(value: str) -> tuple[int, int]:
    from mmcore.bench.workload import parse_image_size

    try:
        return parse_image_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload (random images and words)")
    g.add_argument("--num-prompts", type=int, default=100, help="requests to send")
    g.add_argument("--images-per-request", type=int, default=1, help="random images per request")
    g.add_argument("--image-size", type=_image_size, default=(336, 336), help="WxH of each image")
    g.add_argument("--input-len", type=int, default=64, help="words of text per request")
    g.add_argument("--output-len", type=int, default=64, help="tokens to generate (EOS ignored)")
    g.add_argument("--workload-seed", type=int, default=0, help="seed of the random workload")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_bench_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmark a server or the offline engine")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)

    serve = bench_sub.add_parser(
        "serve",
        help="random multimodal load against an OpenAI-compatible server",
        description="Stream random multimodal chat requests (Poisson arrivals) at a server and "
        "report req/s, output tok/s, TTFT and TPOT (mean/p50/p99) and errors.",
    )
    serve.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root URL")
    serve.add_argument("--model", help="model name (default: the server's first)")
    serve.add_argument("--api-key", help="Bearer token")
    serve.add_argument(
        "--request-rate", type=_rate, default=float("inf"), help="requests/s, or inf"
    )
    serve.add_argument("--max-concurrency", type=int, help="most requests in flight")
    serve.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    _add_workload_args(serve)
    serve.set_defaults(func=cmd_bench_serve)

    offline = bench_sub.add_parser(
        "offline",
        help="the same random workload through Engine.generate",
        description="Run the random multimodal workload through Engine.generate and report "
        "req/s and output tok/s.",
    )
    _add_workload_args(offline)
    EngineArgs.add_cli_args(offline)
    offline.set_defaults(func=cmd_bench_offline)


def _workload(args: argparse.Namespace):
    from mmcore.bench.workload import random_mm_requests

    try:
        return random_mm_requests(
            args.num_prompts,
            input_len=args.input_len,
            output_len=args.output_len,
            images_per_request=args.images_per_request,
            image_size=args.image_size,
            seed=args.workload_seed,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc


def _print(summary, as_json: bool) -> None:
    print(json.dumps(asdict(summary), indent=2) if as_json else summary.format())


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from mmcore.bench.serve_client import run_serve_bench

    summary = asyncio.run(
        run_serve_bench(
            args.base_url,
            _workload(args),
            request_rate=args.request_rate,
            max_concurrency=args.max_concurrency,
            model=args.model,
            api_key=args.api_key,
            timeout_s=args.timeout,
            seed=args.workload_seed,
        )
    )
    _print(summary, args.json)
    return 1 if summary.num_errors else 0


def cmd_bench_offline(args: argparse.Namespace) -> int:
    from mmcore.bench.offline import run_offline_bench
    from mmcore.commands import build_engine_or_exit, engine_args_or_exit

    engine = build_engine_or_exit(engine_args_or_exit(args))
    _print(run_offline_bench(engine, _workload(args)), args.json)
    return 0
