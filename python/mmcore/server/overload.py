"""Admission control: a bounded queue of requests, refused with 429 + Retry-After when full.

A request is counted from the moment it is admitted (before its media is decoded) until its
stream ends. Up to ``max_num_seqs`` of them can run; at most ``max_waiting_requests`` more may
wait. Beyond that a new request is refused at once, so a burst costs neither memory nor a slot
in the engine, and well-behaved clients retry after ``Retry-After`` seconds.
"""

from __future__ import annotations

import logging
import threading

from mmcore.server.errors import APIError

logger = logging.getLogger("mmcore.server")


class AdmissionControl:
    """Counts the server's requests; refuses new ones when the waiting room is full.

    Args:
        max_running: requests the engine runs at once (its ``max_num_seqs``).
        max_waiting: requests that may wait beyond those (None: no limit).
        retry_after_s: the ``Retry-After`` a refused client is told.
    """

    def __init__(self, max_running: int, max_waiting: int | None, retry_after_s: int = 1) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self.num_admitted = 0
        self.num_refused = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int | None:
        """Most requests admitted at once (None: unbounded)."""
        return None if self.max_waiting is None else self.max_running + self.max_waiting

    def admit(self, num: int = 1) -> None:
        """Count ``num`` new engine requests in.

        Raises:
            APIError: 429 with ``Retry-After`` when they would overflow the waiting room.
        """
        with self._lock:
            capacity = self.capacity
            if capacity is not None and self.num_admitted + num > capacity:
                self.num_refused += 1
                raise APIError(
                    429,
                    f"the server is overloaded ({self.num_admitted} requests in flight, at most "
                    f"{capacity}); retry after {self.retry_after_s} s",
                    "server_overloaded",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self.num_admitted += num

    def release(self, num: int = 1) -> None:
        """Count ``num`` engine requests out (finished, failed or aborted)."""
        with self._lock:
            self.num_admitted = max(0, self.num_admitted - num)
