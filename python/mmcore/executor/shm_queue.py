"""A one-writer, many-reader broadcast queue in shared memory (one node, no pickling needed).

The driver writes each step's bytes once; every worker reads them. A ring of slots lives in one
``multiprocessing.shared_memory`` block; each slot has a small header and per-reader flags::

    header  | seq (i64) | length (i64) | last (i64) | read flag per reader (u8, padded) |  x slots
    data    | slot 0 bytes | slot 1 bytes | ...                                          |

Message ``k`` goes to slot ``k % num_slots``: the writer waits until every reader has flagged
the message that slot held before, writes the bytes, clears the flags and publishes ``seq = k+1``
last; a reader waits for ``seq == k+1``, copies the bytes out and sets its flag. A message
larger than a slot spans consecutive slots (``last`` marks its final chunk). Waiting polls with
a backoff (spin, then short sleeps) and calls ``check`` so a dead peer turns into an error
instead of a hang. Stores are ordered on x86-64 (TSO), which the publish-seq-last order relies on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from multiprocessing import shared_memory

import numpy as np

_FIELDS = 3  # seq, length, last


def _backoff(waited: int) -> None:
    if waited < 50:
        time.sleep(0)
    elif waited < 1000:
        time.sleep(5e-5)
    else:
        time.sleep(1e-3)


class ShmBroadcastQueue:
    """The ring; create it in the writer, attach to it by ``name`` in each reader.

    Args:
        num_readers: how many readers flag each message.
        num_slots: ring length (messages in flight).
        slot_bytes: bytes per slot.
        name: attach to an existing ring (a reader) instead of creating one.
        reader: this reader's index (readers only).
    """

    def __init__(
        self,
        num_readers: int,
        *,
        num_slots: int = 8,
        slot_bytes: int = 4 << 20,
        name: str | None = None,
        reader: int | None = None,
    ) -> None:
        self.num_readers, self.num_slots, self.slot_bytes = num_readers, num_slots, slot_bytes
        flag_words = -(-num_readers // 8)
        self._row = _FIELDS + flag_words  # int64 words per slot header
        header_bytes = num_slots * self._row * 8
        size = header_bytes + num_slots * slot_bytes
        self._owner = name is None
        self.shm = shared_memory.SharedMemory(name=name, create=self._owner, size=size)
        buf = self.shm.buf
        self._header = np.ndarray((num_slots, self._row), dtype=np.int64, buffer=buf)
        flags = np.ndarray((num_slots, self._row * 8), dtype=np.uint8, buffer=buf)
        self._flags = flags[:, _FIELDS * 8 : _FIELDS * 8 + num_readers]
        self._data = np.ndarray(
            (num_slots, slot_bytes), dtype=np.uint8, buffer=buf, offset=header_bytes
        )
        if self._owner:
            self._header[:] = 0
            self._flags[:] = 1  # every slot starts free
        self.reader = reader
        self._next = 0  # next message index this side writes / reads

    @property
    def name(self) -> str:
        return self.shm.name

    def handle(self) -> dict:
        """What a reader process needs to attach (``ShmBroadcastQueue(**handle, reader=i)``)."""
        return {
            "num_readers": self.num_readers,
            "num_slots": self.num_slots,
            "slot_bytes": self.slot_bytes,
            "name": self.name,
        }

    # ------------------------------------------------------------------ writer
    def put(self, parts: list, check: Callable[[], None] = lambda: None) -> None:
        """Broadcast one message: the concatenation of ``parts`` (bytes-like / numpy arrays).

        Args:
            parts: the message's pieces, written back to back without joining them first.
            check: called while waiting for a full ring; raise from it to give up.
        """
        views = [
            p.reshape(-1).view(np.uint8)
            if isinstance(p, np.ndarray)
            else np.frombuffer(p, np.uint8)
            for p in parts
        ]
        total = sum(len(v) for v in views)
        chunks = max(1, -(-total // self.slot_bytes))
        part, pos = 0, 0
        for c in range(chunks):
            slot = self._next % self.num_slots
            self._wait(lambda s=slot: bool(self._flags[s].all()), check)
            dest = self._data[slot]
            filled = 0
            size = min(self.slot_bytes, total - c * self.slot_bytes)
            while filled < size:
                take = min(size - filled, len(views[part]) - pos)
                dest[filled : filled + take] = np.frombuffer(
                    views[part][pos : pos + take], np.uint8
                )
                filled, pos = filled + take, pos + take
                if pos == len(views[part]):
                    part, pos = part + 1, 0
            row = self._header[slot]
            row[1], row[2] = size, int(c == chunks - 1)
            self._flags[slot] = 0
            row[0] = self._next + 1  # publish last
            self._next += 1

    # ------------------------------------------------------------------ reader
    def get(self, check: Callable[[], None] = lambda: None) -> bytearray:
        """The next message's bytes, a private writable copy (waits for it, calling ``check``
        while waiting)."""
        chunks = []
        while True:
            slot, seq = self._next % self.num_slots, self._next + 1
            self._wait(lambda s=slot, q=seq: self._header[s, 0] == q, check)
            size, last = int(self._header[slot, 1]), int(self._header[slot, 2])
            chunks.append(bytearray(self._data[slot, :size]))
            self._flags[slot, self.reader] = 1
            self._next += 1
            if last:
                return chunks[0] if len(chunks) == 1 else bytearray(b"".join(chunks))

    def _wait(self, ready: Callable[[], bool], check: Callable[[], None]) -> None:
        waited = 0
        while not ready():
            _backoff(waited)
            waited += 1
            if waited % 256 == 0:
                check()

    def close(self) -> None:
        """Detach; the writer also frees the block."""
        self._header = self._flags = self._data = None
        self.shm.close()
        if self._owner:
            self.shm.unlink()
