"""The error of a failed worker (no heavy imports: the server catches it)."""

from __future__ import annotations


class WorkerFailedError(RuntimeError):
    """A worker process died, hung or raised: the engine cannot go on.

    Attributes:
        rank: the tensor-parallel rank of the failed worker (None: not attributable to one).
    """

    def __init__(self, message: str, rank: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank
