"""Copies a step's host arrays to the device through reusable pinned buffers (async H2D)."""

from __future__ import annotations

import numpy as np
import torch

# Encoder inputs (pixel values, audio features) go through a ring of this many pinned buffers,
# so staging one step's items never waits for the copy of the previous steps' (still queued
# behind a running step under async scheduling).
_TENSOR_RING = 4
# Items larger than this in one call take one pinned copy each instead (a long video must not
# leave gigabytes of page-locked ring behind).
_RING_MAX_BYTES = 256 << 20


class HostStaging:
    """Two pinned host buffers per named step array, grown on demand and used in turn.

    On CUDA, each array is written into its page-locked buffer and sent with a non-blocking copy,
    so the host goes on building the step while the copy runs. Before a buffer is rewritten the
    host waits on the event recorded after its last copy (two uses ago: normally long done), so
    an in-flight copy never reads a buffer being overwritten. On CPU the arrays are wrapped
    without copies.

    Args:
        device: where the tensors go.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = device.type == "cuda"
        self._buffers: dict[str, torch.Tensor] = {}
        self._copied: dict[str, torch.cuda.Event] = {}
        self._turn: dict[str, int] = {}  # to_device: which of a name's two buffers is next
        self._ring_next: dict[str, int] = {}  # tensors_to_device: next slot of each ring

    def _buffer(self, name: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            capacity = max(numel, 2 * (buf.numel() if buf is not None else 0), 64)
            buf = torch.empty(capacity, dtype=dtype, pin_memory=True)
            self._buffers[name] = buf
        return buf[:numel]

    def to_device(self, name: str, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """``array`` as a ``dtype`` tensor on the device (same shape).

        Args:
            name: the buffer to stage through; one name per array of the step.
            array: host values (any numeric dtype, any shape).
            dtype: dtype of the device tensor.

        Returns:
            The device tensor; on CUDA its copy may still be in flight on the current stream.
        """
        host = torch.from_numpy(np.ascontiguousarray(array))
        if not self._pinned:
            return host.to(dtype)
        # Two buffers per name, used in turn: a name staged after the step's forward (e.g. the
        # logits rows) has its last copy queued behind the running step, and waiting on that
        # copy would hold the host until the step ends.
        parity = self._turn.get(name, 0)
        self._turn[name] = 1 - parity
        key = f"{name}#{parity}"
        done = self._copied.get(key)
        if done is not None:
            done.synchronize()  # the copy of the step before last: done
        else:
            done = self._copied[key] = torch.cuda.Event()
        staged = self._buffer(key, dtype, host.numel())
        staged.copy_(host.reshape(-1))
        out = staged.to(self.device, non_blocking=True).view(host.shape)
        done.record()
        return out

    def tensors_to_device(self, name: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Host tensors on the device: per dtype, one copy into a pinned ring buffer and one
        non-blocking host-to-device copy, then views of the result.

        A fresh ``pin_memory()`` per tensor page-locks new memory (``cudaHostAlloc``) whenever
        the caching host allocator's blocks are still tied to queued copies, which in a served
        engine fed a few images per step cost ~10 ms an image (H200, bench/RESULTS.md).

        Args:
            name: the ring to stage through (one name per kind of upload).
            tensors: CPU (or already device) tensors of any dtypes and shapes.

        Returns:
            Device tensors of the same shapes and dtypes, in order (device inputs as they are).
        """
        # Already on the device kind ("cuda" and "cuda:0" are one here) or, on CPU, as they are.
        out: list[torch.Tensor | None] = [
            t if t.device.type == self.device.type else None for t in tensors
        ]
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            if out[i] is None:
                by_dtype.setdefault(t.dtype, []).append(i)
        if not by_dtype:
            return out  # type: ignore[return-value]
        total_bytes = sum(
            tensors[i].numel() * tensors[i].element_size()
            for i in range(len(out))
            if out[i] is None
        )
        if not self._pinned or total_bytes > _RING_MAX_BYTES:
            for i in (i for idx in by_dtype.values() for i in idx):
                t = tensors[i]
                pinned = t.pin_memory() if self._pinned else t
                out[i] = pinned.to(self.device, non_blocking=self._pinned)
            return out  # type: ignore[return-value]
        slot = self._ring_next.get(name, 0)
        self._ring_next[name] = (slot + 1) % _TENSOR_RING
        for dtype, indices in by_dtype.items():
            key = f"{name}/{slot}/{dtype}"
            done = self._copied.get(key)
            if done is not None:
                done.synchronize()  # the copy of _TENSOR_RING calls ago: normally long done
            else:
                done = self._copied[key] = torch.cuda.Event()
            sizes = [tensors[i].numel() for i in indices]
            staged = self._buffer(key, dtype, sum(sizes))
            for part, i in zip(staged.split(sizes), indices):
                part.copy_(tensors[i].reshape(-1))
            device = staged.to(self.device, non_blocking=True)
            done.record()
            for part, i in zip(device.split(sizes), indices):
                out[i] = part.view(tensors[i].shape)
        return out  # type: ignore[return-value]

    def copy_into(self, name: str, array: np.ndarray, dest: torch.Tensor) -> None:
        """Copy ``array`` (same number of elements) into the device tensor ``dest`` in place.

        Args:
            name: the buffer to stage through.
            array: host values, cast to ``dest.dtype``.
            dest: a (possibly strided) view of a static device buffer, e.g. CUDA graph inputs.
        """
        dest.copy_(self.to_device(name, array, dest.dtype).view(dest.shape), non_blocking=True)
