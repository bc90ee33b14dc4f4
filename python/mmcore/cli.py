"""The mmcore command line: generate, serve, bench and info."""

from __future__ import annotations

import argparse
import sys

import mmcore
from mmcore.bench.cli import add_bench_parser
from mmcore.commands import add_generate_parser, add_serve_parser


def _cmd_info(_args: argparse.Namespace) -> int:
    from mmcore import _core

    print(f"mmcore {mmcore.__version__}")
    print(f"core module: {_core.__file__}")
    print(f"CUDA kernels: {'yes' if mmcore.has_cuda_kernels() else 'no'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmcore",
        description="mmcore: a multimodal LLM inference engine. Without a model argument, "
        "generate and serve use the bundled demo model (served as 'mmcore-demo').",
    )
    parser.add_argument("--version", action="version", version=f"mmcore {mmcore.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the version and which native modules are built")
    info.set_defaults(func=_cmd_info)
    add_generate_parser(sub)
    add_serve_parser(sub)
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
