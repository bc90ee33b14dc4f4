"""Fewer compute threads while other processes compete for the cores, all of them otherwise.

An OpenMP team meets at a barrier after every parallel region, so one of its threads losing its
core to a busy neighbour holds the whole team: on a 2-core host with one CPU-bound neighbour a
2-thread step took 4.6x as long, where a 1-thread step took as long as without the neighbour
(bench/RESULTS.md, session 7). The kernel counts exactly that event: an involuntary context
switch (``ru_nivcsw``) is one of this process's threads taken off its core while it could run.
A quiet step sees ~1; the same step next to a busy process ~30 (spinning OpenMP waits) to ~300
(passive waits).

:class:`CpuThreadTuner` watches that count per unit of step time. Above ``CONTENDED_PER_S`` it
drops one thread. While the team is smaller it tries one thread more as soon as the host's
count of running tasks (``/proc/loadavg``) leaves a core free for it, and otherwise after a
hold that doubles with each probe that met the neighbour again (up to ``MAX_HOLD_S``). A probe
costs one window of slower steps; none runs while the team is at its full size and uncontended.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable

import torch

logger = logging.getLogger("mmcore.engine")

# Involuntary context switches per second of step time above which the team is contended.
CONTENDED_PER_S = 150.0
# Step time gathered before deciding (short steps alone are too noisy).
WINDOW_S = 0.03
FIRST_HOLD_S = 1.0
MAX_HOLD_S = 8.0


def _involuntary_switches() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def _running_tasks() -> int | None:
    """Tasks running or runnable on the host now (``/proc/loadavg``), None where unknown."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


class CpuThreadTuner:
    """Sets torch's thread count between 1 and ``max_threads`` from step-time contention.

    Call :meth:`step_started` and :meth:`step_finished` around each engine step (on the thread
    that runs the model: torch's thread count is per calling thread's OpenMP team).
    """

    def __init__(
        self,
        max_threads: int,
        set_threads: Callable[[int], None],
        clock: Callable[[], float] = time.perf_counter,
        switches: Callable[[], int] = _involuntary_switches,
        running_tasks: Callable[[], int | None] = _running_tasks,
        cores: int | None = None,
    ) -> None:
        if max_threads < 2:
            raise ValueError(f"max_threads must be at least 2, got {max_threads}")
        self.max_threads = max_threads
        self.threads = max_threads
        self._set_threads = set_threads
        self._clock = clock
        self._switches = switches
        self._running_tasks = running_tasks
        self.cores = cores if cores is not None else len(os.sched_getaffinity(0))
        self._others: list[float] = []  # other tasks running, sampled at step ends
        self._hold_s = FIRST_HOLD_S
        self._held_until: float | None = None  # while below max_threads: when to probe up
        self._probing = False
        self._window_s = 0.0
        self._window_switches = 0
        self._started: tuple[float, int] | None = None

    def step_started(self) -> None:
        """Mark the start of a step."""
        self._started = (self._clock(), self._switches())

    def step_finished(self) -> None:
        """Count the step's time and switches; change the thread count when a window is full."""
        if self._started is None:
            return
        t0, s0 = self._started
        self._started = None
        now = self._clock()
        self._window_s += now - t0
        self._window_switches += self._switches() - s0
        if self.threads < self.max_threads and not self._probing:
            running = self._running_tasks()
            if running is not None:  # this team's threads run (or spin) too
                self._others.append(running - self.threads)
        if self._window_s < WINDOW_S:
            if self._held_until is not None and now >= self._held_until:
                self._probe_up()
            return
        contended = self._window_switches / self._window_s > CONTENDED_PER_S
        others, self._others = self._others, []
        # A core free for one thread more (on average over the window's step ends).
        room = bool(others) and sum(others) / len(others) <= self.cores - self.threads - 1 + 0.25
        self._window_s, self._window_switches = 0.0, 0
        if contended and self.threads > 1:
            # A probe that met the neighbour again: hold the smaller team twice as long.
            self._hold_s = min(MAX_HOLD_S, self._hold_s * 2) if self._probing else FIRST_HOLD_S
            self._probing = False
            self._set(self.threads - 1)
            self._held_until = now + self._hold_s
        elif not contended and self._probing:
            self._probing = False  # the larger team runs undisturbed: keep it
            self._hold_s = FIRST_HOLD_S
            self._held_until = None if self.threads == self.max_threads else now + self._hold_s
        elif self._held_until is not None and (room or now >= self._held_until):
            self._probe_up()

    def _probe_up(self) -> None:
        self._probing = True
        self._held_until = None
        self._window_s, self._window_switches = 0.0, 0
        self._set(self.threads + 1)

    def _set(self, threads: int) -> None:
        if threads != self.threads:
            logger.debug("CPU threads: %d -> %d", self.threads, threads)
            self.threads = threads
            self._set_threads(threads)


def cpu_thread_tuner_for(runner) -> CpuThreadTuner | None:
    """A tuner for an in-process runner on the CPU with more than one torch thread, unless
    ``MMCORE_CPU_ADAPTIVE_THREADS=0``; else None."""
    if runner is None or getattr(runner, "device", None) is None or runner.device.type != "cpu":
        return None
    if os.environ.get("MMCORE_CPU_ADAPTIVE_THREADS", "1") == "0" or torch.get_num_threads() < 2:
        return None
    return CpuThreadTuner(torch.get_num_threads(), torch.set_num_threads)
