"""`mmcore serve` in a subprocess for benchmark scripts: a free port, start, wait, stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO

import httpx2 as httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: str,
    port: int,
    *,
    device: str = "cpu",
    extra_args: Sequence[str] = (),
    log: IO | None = None,
) -> subprocess.Popen:
    """Start `mmcore serve MODEL` on 127.0.0.1:``port`` (warning-level logs, no stats line).

    Args:
        model: checkpoint folder.
        port: TCP port to bind.
        device: ``--device`` of the server.
        extra_args: more `mmcore serve` options (e.g. ``["--load-format", "dummy"]``).
        log: file that takes the server's stdout and stderr (default: discarded).

    Returns:
        The server process.
    """
    cmd = [sys.executable, "-m", "mmcore.cli", "serve", model, "--device", device]
    cmd += ["--port", str(port), "--log-level", "warning", "--disable-log-stats", *extra_args]
    sink = log if log is not None else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT if log else sink)


def wait_healthy(
    url: str, timeout_s: float = 300.0, process: subprocess.Popen | None = None
) -> None:
    """Poll ``url``/health until it answers 200; raises RuntimeError on timeout or when
    ``process`` exits first (a server that failed to start)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was up")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not become healthy in {timeout_s:.0f} s")


def stop_server(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
