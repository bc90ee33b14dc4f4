"""Console scripts ``mmcore-bench-scheduler`` and ``mmcore-bench-block-manager``: run the C++
benchmark binaries shipped in the wheel with the given flags (``--help`` lists them)."""

from __future__ import annotations

import subprocess
import sys

from mmcore.cpp_package import get_bench_binary


def _run(name: str, argv: list[str] | None) -> int:
    try:
        binary = get_bench_binary(name)
    except FileNotFoundError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    args = sys.argv[1:] if argv is None else argv
    return subprocess.call([binary, *args])


def bench_scheduler(argv: list[str] | None = None) -> int:
    """Run ``mmcore-bench-scheduler`` (scheduler step time at N running requests).

    Args:
        argv: flags for the binary; ``None`` takes them from ``sys.argv``.

    Returns:
        The binary's exit status.
    """
    return _run("mmcore-bench-scheduler", argv)


def bench_block_manager(argv: list[str] | None = None) -> int:
    """Run ``mmcore-bench-block-manager`` (KV block manager call costs).

    Args:
        argv: flags for the binary; ``None`` takes them from ``sys.argv``.

    Returns:
        The binary's exit status.
    """
    return _run("mmcore-bench-block-manager", argv)


def main_scheduler() -> None:
    """Entry point of the ``mmcore-bench-scheduler`` console script."""
    raise SystemExit(bench_scheduler())


def main_block_manager() -> None:
    """Entry point of the ``mmcore-bench-block-manager`` console script."""
    raise SystemExit(bench_block_manager())
