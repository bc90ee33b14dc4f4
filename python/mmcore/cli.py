"""The mmcore command line: generate, serve, bench and info."""

from __future__ import annotations

import argparse
import sys

import mmcore
from mmcore import cpp_package
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
    paths = parser.add_mutually_exclusive_group()
    paths.add_argument(
        "--cmake-dir", action="store_true", help="print the C++ core's CMake package folder"
    )
    paths.add_argument(
        "--include-dir", action="store_true", help="print the C++ core's include folder"
    )
    paths.add_argument("--pkgconfig-dir", action="store_true", help="print the folder of mmcore.pc")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="print the version and which native modules are built")
    info.set_defaults(func=_cmd_info)
    add_generate_parser(sub)
    add_serve_parser(sub)
    add_bench_parser(sub)
    return parser


def _print_path(getter) -> int:
    try:
        print(getter())
    except FileNotFoundError as exc:
        print(f"mmcore: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmake_dir:
        return _print_path(cpp_package.get_cmake_dir)
    if args.include_dir:
        return _print_path(cpp_package.get_include)
    if args.pkgconfig_dir:
        return _print_path(cpp_package.get_pkgconfig_dir)
    if args.command is None:
        parser.error("a command is required (info, generate, serve, bench) or --cmake-dir")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
