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
        self._next_slot: dict[str, int] = {}  # which of a name's buffers is used next

    def _buffer(self, name: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            capacity = max(numel, 2 * (buf.numel() if buf is not None else 0), 64)
            buf = torch.empty(capacity, dtype=dtype, pin_memory=True)
            self._buffers[name] = buf
        return buf[:numel]

    def _slot(self, name: str, slots: int) -> int:
        """The next of ``name``'s ``slots`` buffers, in turn."""
        slot = self._next_slot.get(name, 0)
        self._next_slot[name] = (slot + 1) % slots
        return slot

    def _send(self, key: str, dtype: torch.dtype, sources: list[torch.Tensor]) -> torch.Tensor:
        """``sources`` flattened one after another into the pinned buffer ``key`` (as ``dtype``)
        and sent with one non-blocking copy; returns the flat device tensor."""
        done = self._copied.get(key)
        if done is not None:
            done.synchronize()  # the buffer's last copy, a full turn of its slots ago: done
        else:
            done = self._copied[key] = torch.cuda.Event()
        sizes = [t.numel() for t in sources]
        staged = self._buffer(key, dtype, sum(sizes))
        for part, source in zip(staged.split(sizes), sources):
            part.copy_(source.reshape(-1))
        out = staged.to(self.device, non_blocking=True)
        done.record()
        return out

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
        key = f"{name}#{self._slot(name, 2)}"
        return self._send(key, dtype, [host]).view(host.shape)

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
        out = list(tensors)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            if t.device.type != self.device.type:
                by_dtype.setdefault(t.dtype, []).append(i)
        host = [i for indices in by_dtype.values() for i in indices]
        if not host:
            return out
        if not self._pinned or sum(tensors[i].nbytes for i in host) > _RING_MAX_BYTES:
            for i in host:
                t = tensors[i]
                pinned = t.pin_memory() if self._pinned else t
                out[i] = pinned.to(self.device, non_blocking=self._pinned)
            return out
        slot = self._slot(name, _TENSOR_RING)
        for dtype, indices in by_dtype.items():
            sources = [tensors[i] for i in indices]
            flat = self._send(f"{name}/{slot}/{dtype}", dtype, sources)
            for part, i in zip(flat.split([t.numel() for t in sources]), indices):
                out[i] = part.view(tensors[i].shape)
        return out

    def copy_into(self, name: str, array: np.ndarray, dest: torch.Tensor) -> None:
        """Copy ``array`` (same number of elements) into the device tensor ``dest`` in place.

        Args:
            name: the buffer to stage through.
            array: host values, cast to ``dest.dtype``.
            dest: a (possibly strided) view of a static device buffer, e.g. CUDA graph inputs.
        """
        dest.copy_(self.to_device(name, array, dest.dtype).view(dest.shape), non_blocking=True)
