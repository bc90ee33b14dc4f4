"""Copies a step's host arrays to the device through reusable pinned buffers (async H2D)."""

from __future__ import annotations

import numpy as np
import torch


class HostStaging:
    """One pinned host buffer per named step array, grown on demand and reused every step.

    On CUDA, each array is written into its page-locked buffer and sent with a non-blocking copy,
    so the host goes on building the step while the copy runs. Before a buffer is rewritten the
    host waits on the event recorded after its last copy (normally long done), so an in-flight
    copy never reads a buffer being overwritten. On CPU the arrays are wrapped without copies.

    Args:
        device: where the tensors go.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = device.type == "cuda"
        self._buffers: dict[str, torch.Tensor] = {}
        self._copied: dict[str, torch.cuda.Event] = {}

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
        done = self._copied.get(name)
        if done is not None:
            done.synchronize()
        else:
            done = self._copied[name] = torch.cuda.Event()
        staged = self._buffer(name, dtype, host.numel())
        staged.copy_(host.reshape(-1))
        out = staged.to(self.device, non_blocking=True).view(host.shape)
        done.record()
        return out

    def copy_into(self, name: str, array: np.ndarray, dest: torch.Tensor) -> None:
        """Copy ``array`` (same number of elements) into the device tensor ``dest`` in place.

        Args:
            name: the buffer to stage through.
            array: host values, cast to ``dest.dtype``.
            dest: a (possibly strided) view of a static device buffer, e.g. CUDA graph inputs.
        """
        dest.copy_(self.to_device(name, array, dest.dtype).view(dest.shape), non_blocking=True)
