"""Where a CPU-served engine's threads run: compute on its own cores, HTTP and I/O on another.

A serving process on a CPU host has two kinds of work: the model's compute (one OpenMP team,
started by the thread that first runs torch) and everything else (the event loop, input
threads, the scheduler's Python). Left alone, the OpenMP team spins on every core and fights the
event loop and any busy neighbour for them, so one competing process can slow a step 5-15x.
Here, from the process's CPU affinity (what ``taskset``, cgroups or a container allow):

    cores the process may use:  [ 0 | 1 2 3 ... ]
                                  io  compute (OpenMP team, torch threads = their count)

the engine thread (and so its OpenMP team) is pinned to the compute cores, the HTTP and input
threads to the I/O core, and OpenMP waits passively (it sleeps instead of spinning), so a busy
neighbour costs in proportion to the cores it takes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger("mmcore.engine")


@dataclass(frozen=True)
class CpuPlacement:
    """Cores for compute and for everything else.

    Attributes:
        compute_cores: cores of the engine thread and its OpenMP team.
        io_cores: cores of the event loop, input threads and other Python work.
    """

    compute_cores: tuple[int, ...]
    io_cores: tuple[int, ...]

    @property
    def num_compute_threads(self) -> int:
        return len(self.compute_cores)


def plan_cpu_placement(cores: set[int] | None = None, io_cores: int = 1) -> CpuPlacement:
    """Split the process's cores: ``io_cores`` for I/O, the rest for compute.

    Args:
        cores: the cores to split (default: the process's affinity).
        io_cores: cores kept for the event loop and input threads (0 on a one-core host).

    Returns:
        The placement; with a single core both sides share it.
    """
    available = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if len(available) <= io_cores or len(available) == 1:
        return CpuPlacement(tuple(available), tuple(available))
    return CpuPlacement(tuple(available[io_cores:]), tuple(available[:io_cores]))


def set_openmp_environment(placement: CpuPlacement) -> None:
    """Set OpenMP's thread count and passive waiting, unless the user set them; call before
    torch is imported (OpenMP reads them once, when it loads)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(placement.num_compute_threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Torch (OpenMP) threads of each process of `mmcore serve` on a GPU host. Their host work is
# copies of a step's inputs and Python; a team as large as the machine there only contends
# with the server's other processes: on an H200 host the engine core's 32-thread copies of
# each image into pinned memory took ~9 ms apiece under load (bench/RESULTS.md, session 6).
# vLLM's GPU worker processes run one thread as well.
GPU_HOST_THREADS = 1


def set_gpu_host_threads() -> str | None:
    """Give `mmcore serve` on a GPU host (and the engine core, media and TP worker processes
    it starts, which inherit the environment) ``GPU_HOST_THREADS`` torch threads, unless
    ``OMP_NUM_THREADS`` is set; call before torch is imported.

    Returns:
        The ``OMP_NUM_THREADS`` now in effect and whether the user set it, as a log message.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return f"host threads: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (set by the user)"
    os.environ["OMP_NUM_THREADS"] = str(GPU_HOST_THREADS)
    return (
        f"host threads: {GPU_HOST_THREADS} torch thread per process on a GPU host "
        "(OMP_NUM_THREADS sets the count)"
    )


def pin_current_thread(cores: tuple[int, ...]) -> None:
    """Run the calling thread (and threads it starts later) on ``cores`` only."""
    os.sched_setaffinity(0, cores)  # pid 0: the calling thread on Linux


def pin_compute_thread(placement: CpuPlacement) -> None:
    """Pin the calling (engine) thread to the compute cores and size torch's thread pool to
    them; the OpenMP team it starts inherits the pinning."""
    import torch

    pin_current_thread(placement.compute_cores)
    torch.set_num_threads(placement.num_compute_threads)
    logger.info(
        "CPU placement: compute on cores %s (%d threads), I/O on cores %s",
        list(placement.compute_cores),
        placement.num_compute_threads,
        list(placement.io_cores),
    )


def apply_offline_cpu_threads(cores: set[int] | None = None) -> int | None:
    """Size torch's thread pool for an offline ``Engine`` on a CPU as ``mmcore serve`` and
    vLLM's CPU backend do: one core left for the rest of the process (input processing,
    scheduling, the caller's own threads), unless ``OMP_NUM_THREADS`` names a count.

    An OpenMP team as large as the machine waits actively at every barrier, so any other busy
    thread or process stalls each step: on a 2-core host with one competing process, tiny
    LLaVA ran at 1.7 req/s with 2 threads and 35.8 with 1 (bench/RESULTS.md, session 5).

    Args:
        cores: the cores the process may use (default: its affinity).

    Returns:
        The thread count set, or None when ``OMP_NUM_THREADS`` is set (then nothing changes).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    threads = plan_cpu_placement(cores).num_compute_threads
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.info(
            "CPU: compute on %d torch threads (one core left for the rest; OMP_NUM_THREADS "
            "sets the count)",
            threads,
        )
    return threads
