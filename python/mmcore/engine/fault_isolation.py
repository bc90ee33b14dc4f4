"""Which requests a failed step belongs to, so one bad request never stops the engine.

The runner raises :class:`RequestFault` when it can name the requests behind a failure: it
re-runs the failed piece (an encoder batch, the sampler) one request at a time and keeps those
that fail alone. The engine then fails those requests with an error, recomputes the step's other
requests, and goes on. A failure no request can be blamed for still stops the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


class RequestFault(RuntimeError):
    """A step failed because of the requests ``core_ids``.

    Args:
        core_ids: the core request ids to blame.
        cause: the original exception.
    """

    def __init__(self, core_ids: Sequence[int], cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.core_ids = sorted(set(core_ids))
        self.cause = cause


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device (or host allocator) out-of-memory error."""
    return isinstance(exc, torch.OutOfMemoryError)


def find_faulty(candidates: Sequence[T], run_one: Callable[[T], object]) -> list[T]:
    """The candidates for which ``run_one`` raises when run alone (out-of-memory re-raised:
    running fewer at once is not a verdict on one of them).

    Args:
        candidates: what to try one at a time (e.g. rows of a batch).
        run_one: runs the failed work for one candidate.

    Returns:
        The candidates that fail on their own, in order.
    """
    faulty = []
    for candidate in candidates:
        try:
            run_one(candidate)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            faulty.append(candidate)
    return faulty


def newest_requests(req_ids: Sequence[int], fraction: float = 0.5) -> list[int]:
    """The newest ``fraction`` of a step's requests (at least one); core ids grow with arrival.

    Args:
        req_ids: the core request ids of the step.
        fraction: the share to return.

    Returns:
        The newest ids, newest first.
    """
    ordered = sorted(set(req_ids), reverse=True)
    return ordered[: max(1, int(len(ordered) * fraction))]
