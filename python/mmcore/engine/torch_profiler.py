"""``Engine.start_profile()`` / ``stop_profile()``: a PyTorch profiler trace of the steps between
them, one per rank (vLLM's ``VLLM_TORCH_PROFILER_DIR``, here ``MMCORE_TORCH_PROFILER_DIR``).

Each rank writes ``rank{r}_trace.json`` (open it in Perfetto or chrome://tracing) and
``rank{r}_summary.txt`` (the operators and kernels by total device time, then by CPU time).
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
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the kernels launched so far end inside the trace
        profile, self._profile = self._profile, None
        profile.stop()
        trace = os.path.join(self._folder, f"rank{self.rank}_trace.json")
        summary = os.path.join(self._folder, f"rank{self.rank}_summary.txt")
        profile.export_chrome_trace(trace)
        averages = profile.key_averages()
        device_sort = (
            "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        )
        with open(summary, "w") as f:
            f.write(averages.table(sort_by=device_sort, row_limit=40) + "\n")
            f.write(averages.table(sort_by="self_cpu_time_total", row_limit=40) + "\n")
        return [trace, summary]
