"""LRU cache of processor outputs (dicts of tensors), bounded by the bytes of those tensors.

Keyed by (item content hash, processor kwargs), so the same image sent again, by the same or
another request, skips the HF processor. Thread-safe: one lock around every operation.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from mmcore.multimodal.hashing import hash_kwargs

__all__ = ["ProcessorCache", "ProcessorCacheStats", "nbytes_of"]


def nbytes_of(value) -> int:
    """Bytes held by the tensors and arrays in ``value`` (nested dicts/lists/tuples walked).

    Other leaves (ints, strings, ...) count as 0.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value)
    return 0


@dataclass(frozen=True)
class ProcessorCacheStats:
    hits: int
    misses: int
    num_entries: int
    num_bytes: int
    max_bytes: int


class ProcessorCache:
    """LRU map from (content hash, kwargs) to processed outputs, at most ``max_bytes`` of tensors.

    Values are returned as stored (not copied): callers must not modify them in place.
    """

    def __init__(self, max_bytes: int):
        """
        Args:
            max_bytes: Upper bound on the summed tensor bytes of all entries (0 disables caching).
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], tuple[dict, int]] = OrderedDict()
        self._num_bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def _key(item_hash: str, kwargs: Mapping | None) -> tuple[str, str]:
        if not isinstance(item_hash, str) or not item_hash:
            raise ValueError(f"item_hash must be a non-empty str, got {item_hash!r}")
        return item_hash, hash_kwargs(kwargs)

    def get(self, item_hash: str, kwargs: Mapping | None = None) -> dict | None:
        """The cached output for the item and kwargs (marked most recently used), or None.

        Counts a hit or a miss.
        """
        key = self._key(item_hash, kwargs)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[0]

    def put(self, item_hash: str, value: dict, kwargs: Mapping | None = None) -> bool:
        """Store ``value``, evicting least recently used entries until it fits.

        Args:
            item_hash: Content hash of the item (``hashing.hash_item``).
            value: Processor output, e.g. ``{"pixel_values": tensor, "image_sizes": tensor}``.
            kwargs: Processor kwargs the output was made with.

        Returns:
            True if stored; False if ``value`` alone is larger than ``max_bytes`` (not cached).
        """
        if not isinstance(value, Mapping):
            raise ValueError(f"processor outputs must be dicts, got {type(value).__name__}")
        key = self._key(item_hash, kwargs)
        size = nbytes_of(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._num_bytes -= old[1]
            if size > self.max_bytes:
                return False
            while self._num_bytes + size > self.max_bytes:
                _, (_, evicted_size) = self._entries.popitem(last=False)
                self._num_bytes -= evicted_size
            self._entries[key] = (dict(value), size)
            self._num_bytes += size
            return True

    def get_or_compute(
        self, item_hash: str, compute: Callable[[], dict], kwargs: Mapping | None = None
    ) -> dict:
        """The cached output, or ``compute()`` stored and returned (computed outside the lock)."""
        cached = self.get(item_hash, kwargs)
        if cached is not None:
            return cached
        value = compute()
        self.put(item_hash, value, kwargs)
        return value

    def __contains__(self, key: tuple[str, Mapping | None]) -> bool:
        """``(item_hash, kwargs) in cache``; touches neither the LRU order nor the counters."""
        item_hash, kwargs = key
        cache_key = self._key(item_hash, kwargs)
        with self._lock:
            return cache_key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._entries.clear()
            self._num_bytes = 0

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    @property
    def misses(self) -> int:
        with self._lock:
            return self._misses

    @property
    def num_bytes(self) -> int:
        with self._lock:
            return self._num_bytes

    def stats(self) -> ProcessorCacheStats:
        """A consistent snapshot of the counters and sizes."""
        with self._lock:
            return ProcessorCacheStats(
                self._hits, self._misses, len(self._entries), self._num_bytes, self.max_bytes
            )
