"""``Engine.start_profile()`` / ``stop_profile()``: a PyTorch profiler trace of the steps between
them, one per rank (vLLM's ``VLLM_TORCH_PROFILER_DIR``, here ``MMCORE_TORCH_PROFILER_DIR``).

Each rank writes ``rank{r}_trace.json`` (open it in Perfetto or chrome://tracing) and
``rank{r}_summary.txt`` (the operators and kernels by total device time, then by CPU time);
with worker processes (tensor parallel) the engine's own thread writes ``driver_summary.txt`` too
(Python's cProfile: scheduling, input processing, step encoding, detokenizing by function).
"""

from __future__ import annotations

import os

import torch

PROFILER_DIR_ENV = "MMCORE_TORCH_PROFILER_DIR"


def profiler_dir() -> str:
    """The output folder named by ``MMCORE_TORCH_PROFILER_DIR``.

    Raises:
        RuntimeError: the variable is not set (profiling is off).
    """
    folder = os.environ.get(PROFILER_DIR_ENV)
    if not folder:
        raise RuntimeError(f"profiling is off: set {PROFILER_DIR_ENV} to an output folder")
    return folder


class StepProfiler:
    """One rank's profiler: :meth:`start` a trace, :meth:`stop` writes it."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self._profile: torch.profiler.profile | None = None
        self._folder = ""

    @property
    def running(self) -> bool:
        return self._profile is not None

    def start(self, folder: str) -> None:
        """Start tracing CPU operators (and CUDA kernels where there is a GPU).

        Raises:
            RuntimeError: already tracing.
        """
        if self._profile is not None:
            raise RuntimeError("the profiler is already running: stop_profile() first")
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        os.makedirs(folder, exist_ok=True)
        self._folder = folder
        self._profile = torch.profiler.profile(activities=activities, record_shapes=True)
        self._profile.start()

    def stop(self) -> list[str]:
        """Stop tracing and write this rank's trace and summary; returns their paths.

        Raises:
            RuntimeError: not tracing.
        """
        if self._profile is None:
            raise RuntimeError("the profiler is not running: start_profile() first")
        on_device = torch.cuda.is_available()
        if on_device:
            torch.cuda.synchronize()  # the kernels launched so far end inside the trace
        profile, self._profile = self._profile, None
        profile.stop()
        trace = os.path.join(self._folder, f"rank{self.rank}_trace.json")
        summary = os.path.join(self._folder, f"rank{self.rank}_summary.txt")
        profile.export_chrome_trace(trace)
        averages = profile.key_averages()
        device_sort = "self_device_time_total" if on_device else "self_cpu_time_total"
        with open(summary, "w") as f:
            f.write(averages.table(sort_by=device_sort, row_limit=40) + "\n")
            f.write(averages.table(sort_by="self_cpu_time_total", row_limit=40) + "\n")
        return [trace, summary]


class DriverProfiler:
    """The engine thread's Python functions (cProfile), when workers run the model."""

    def __init__(self, folder: str) -> None:
        import cProfile

        self._folder = folder
        self._profile = cProfile.Profile()
        self._profile.enable()

    def stop(self) -> str:
        """Stop and write ``driver_summary.txt`` (top functions by total and by own time)."""
        import io
        import pstats

        self._profile.disable()
        out = io.StringIO()
        stats = pstats.Stats(self._profile, stream=out)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(40)
        path = os.path.join(self._folder, "driver_summary.txt")
        with open(path, "w") as f:
            f.write(out.getvalue())
        return path


class ProfilingCalls:
    """``Engine.start_profile()`` / ``stop_profile()`` over the engine's executor (a mixin:
    the engine calls :meth:`init_profiling` once it has ``self.executor``)."""

    def init_profiling(self) -> None:
        self._profiling = False
        self._driver_profiler: DriverProfiler | None = None

    def start_profile(self) -> None:
        """Trace the following steps with the PyTorch profiler on every rank (vLLM's call).

        Raises:
            RuntimeError: ``MMCORE_TORCH_PROFILER_DIR`` is not set, or a trace is running.
        """
        from mmcore.executor.uni import UniExecutor

        folder = profiler_dir()
        if self._profiling:
            raise RuntimeError("the profiler is already running: stop_profile() first")
        self.executor.profile("start", folder)
        if not isinstance(self.executor, UniExecutor):  # workers run the model: trace here too
            self._driver_profiler = DriverProfiler(folder)
        self._profiling = True

    def stop_profile(self) -> None:
        """Stop the trace; each rank writes ``rank{r}_trace.json`` and ``rank{r}_summary.txt``
        (with worker processes, ``driver_summary.txt`` of the engine's thread too) into
        ``MMCORE_TORCH_PROFILER_DIR`` before this returns.

        Raises:
            RuntimeError: no trace is running.
        """
        if not self._profiling:
            raise RuntimeError("the profiler is not running: start_profile() first")
        self._profiling = False
        self.executor.profile("stop")
        if self._driver_profiler is not None:
            self._driver_profiler.stop()
            self._driver_profiler = None
