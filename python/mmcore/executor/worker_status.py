"""Per-rank liveness in shared memory: a heartbeat time and the count of steps each rank has
launched, written by the workers and read by the driver to name a rank that hangs."""

from __future__ import annotations

import os
import threading
import time
from multiprocessing import shared_memory

import numpy as np

HEARTBEAT_PERIOD_S = 0.5


class WorkerStatus:
    """``heartbeat[rank]`` (monotonic-ish wall time) and ``steps_done[rank]`` for every rank.

    Args:
        world_size: number of ranks.
        name: attach to the driver's block (workers) instead of creating it.
    """

    def __init__(self, world_size: int, name: str | None = None) -> None:
        self._owner = name is None
        self.shm = shared_memory.SharedMemory(name=name, create=self._owner, size=16 * world_size)
        self.heartbeat = np.ndarray((world_size,), np.float64, self.shm.buf)
        self.steps_done = np.ndarray((world_size,), np.int64, self.shm.buf, offset=8 * world_size)
        if self._owner:
            self.heartbeat[:] = 0.0  # not beating yet (still importing)
            self.steps_done[:] = 0

    @property
    def name(self) -> str:
        return self.shm.name

    def start_heartbeat(self, rank: int, parent_pid: int) -> None:
        """Beat from a daemon thread (alive while the process runs, even inside a collective);
        exit the process when the driver is gone, so no worker outlives it."""

        def beat() -> None:
            while True:
                if os.getppid() != parent_pid:
                    os._exit(1)
                self.heartbeat[rank] = time.time()
                time.sleep(HEARTBEAT_PERIOD_S)

        threading.Thread(target=beat, name="mmcore-heartbeat", daemon=True).start()

    def stale_ranks(self, older_than_s: float) -> list[int]:
        """Ranks that have started beating and whose last beat is older than ``older_than_s``."""
        now = time.time()
        return [r for r, t in enumerate(self.heartbeat.tolist()) if 0 < t < now - older_than_s]

    def close(self) -> None:
        self.heartbeat = self.steps_done = None
        self.shm.close()
        if self._owner:
            self.shm.unlink()
