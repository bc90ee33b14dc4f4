"""Sampling profiles of running processes with py-spy, and their CPU seconds, for benchmarks.

    with SpyRecorder(pid, "server.txt"):   # py-spy record --pid PID --subprocesses (raw)
        run_the_phase()
    print(summarize("server.txt"))         # per process: busiest functions, self and inclusive

A missing py-spy binary is an error (a profile that was asked for is never silently skipped).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import time


class SpyRecorder:
    """Records ``pid`` (and its child processes) with py-spy while the ``with`` block runs."""

    def __init__(
        self, pid: int, path: str, rate: int = 100, native: bool = False, subprocesses: bool = True
    ) -> None:
        exe = shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy is not on PATH (pip install py-spy)")
        self.cmd = [exe, "record", "--pid", str(pid), "--nonblocking",
                    "--rate", str(rate), "--format", "raw", "-o", path]  # fmt: skip
        if subprocesses:
            self.cmd.append("--subprocesses")
        if native:
            self.cmd.append("--native")
        self.path = path
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> SpyRecorder:
        self._process = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(0.5)  # py-spy attaches before the measured work starts
        if self._process.poll() is not None:
            raise RuntimeError(f"py-spy exited at once: {self._process.stderr.read()}")
        return self

    def __exit__(self, *exc) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = self._process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            raise RuntimeError("py-spy did not stop within 60 s") from None
        if not os.path.exists(self.path):
            raise RuntimeError(f"py-spy wrote no {self.path}: {err[-500:]}")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _stat_cpu(path: str) -> tuple[str, float] | None:
    """(name, user + system CPU seconds) from a /proc ``stat`` file; None once it is gone."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.find("(") + 1 : text.rfind(")")]
    fields = text.rsplit(")", 1)[1].split()
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cpu_seconds(pid: int, descendants: bool = True) -> dict[int, float]:
    """User + system CPU seconds of ``pid`` and (by default) each of its descendants, by pid
    (Linux)."""
    result: dict[int, float] = {}
    stack = [pid]
    while stack:
        current = stack.pop()
        stat = _stat_cpu(f"/proc/{current}/stat")
        if stat is None:
            continue
        result[current] = stat[1]
        if descendants:
            stack.extend(_children(current))
    return result


def cpu_seconds_delta(before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds spent between two :func:`cpu_seconds` readings, by pid (as text)."""
    return {str(p): round(after[p] - before.get(p, 0.0), 2) for p in after}


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, keyed ``"tid name"`` (Linux)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    result: dict[str, float] = {}
    for tid in tids:
        stat = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        if stat is not None:
            result[f"{tid} {stat[0]}"] = stat[1]
    return result


def busiest_threads(before: dict[str, float], after: dict[str, float], top: int = 12) -> dict:
    """The ``top`` threads by CPU seconds between two :func:`thread_cpu_seconds` readings, and
    how many threads used more than 0.5 s."""
    spent = {k: after[k] - before.get(k, 0.0) for k in after}
    ranked = sorted(spent.items(), key=lambda kv: -kv[1])
    return {
        "threads_over_half_s": sum(1 for _, v in ranked if v > 0.5),
        "top": {k: round(v, 2) for k, v in ranked[:top]},
    }


def summarize(path: str, top: int = 25) -> str:
    """Per process of a raw py-spy file: samples, then the functions with the most samples on
    top of the stack (self) and anywhere in it (inclusive)."""
    per_process: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
        lambda: {
            "self": collections.Counter(),
            "incl": collections.Counter(),
            "total": collections.Counter(),
        }  # fmt: skip
    )
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():  # a frame name with a line break in it
                continue
            frames = stack.split(";")
            roots = [i for i, fr in enumerate(frames) if fr.startswith("process ")]
            proc = frames[roots[-1]][:100] if roots else "?"
            body = frames[roots[-1] + 1 :] if roots else frames
            n = int(count)
            table = per_process[proc]
            table["total"]["all"] += n
            if body:
                table["self"][body[-1]] += n
                for name in set(body):
                    table["incl"][name] += n
    lines = []
    for proc, table in sorted(per_process.items(), key=lambda kv: -kv[1]["total"]["all"]):
        total = table["total"]["all"]
        lines.append(f"== {proc}  samples {total}")
        for kind in ("self", "incl"):
            lines.append(f"  -- {kind}")
            for name, n in table[kind].most_common(top):
                lines.append(f"  {n / total:6.1%} {name[:150]}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(summarize(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25))
