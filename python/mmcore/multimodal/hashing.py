"""Content hashes of multimodal items: the item identifier of the encoder and prefix caches.

The hash covers the item's content (an image's mode, size, palette and pixels; an array's dtype,
shape and bytes) and every keyword argument (processor kwargs, model id), with each field framed
by a type tag and its length, so different inputs cannot produce the same byte stream. Nothing
depends on Python's per-process ``hash()``: equal inputs hash equally in every process.
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
from collections.abc import Mapping

import numpy as np
from PIL import Image

__all__ = ["hash_item", "hash_kwargs"]


def _frame(h, tag: bytes, payload: bytes) -> None:
    h.update(tag)
    h.update(struct.pack("<Q", len(payload)))
    h.update(payload)


def _update_array(h, array: np.ndarray) -> None:
    if array.dtype.hasobject:
        raise ValueError("cannot hash a numpy array of Python objects (dtype=object)")
    array = np.ascontiguousarray(array)
    _frame(h, b"dtype", array.dtype.str.encode())
    _frame(h, b"shape", struct.pack(f"<{array.ndim}q", *array.shape))
    _frame(h, b"data", memoryview(array).cast("B") if array.size else b"")


def _update_tensor(h, tensor) -> None:
    import torch

    t = tensor.detach().cpu().contiguous()
    _frame(h, b"tdtype", str(t.dtype).encode())
    _frame(h, b"shape", struct.pack(f"<{t.ndim}q", *t.shape))
    # Raw bytes of any dtype (bfloat16 included, which numpy lacks).
    raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
    _frame(h, b"data", raw.tobytes())


def _update_image(h, image: Image.Image) -> None:
    _frame(h, b"mode", image.mode.encode())
    _frame(h, b"size", struct.pack("<qq", *image.size))
    palette = image.getpalette() if image.mode in ("P", "PA") else None
    if palette is not None:
        _frame(h, b"palette", bytes(palette))
    _frame(h, b"pixels", image.tobytes())


def _update(h, obj) -> None:
    """Feed one value, recursively, into the hash with an unambiguous framing."""
    if obj is None:
        _frame(h, b"none", b"")
    elif isinstance(obj, bool):
        _frame(h, b"bool", b"\x01" if obj else b"\x00")
    elif isinstance(obj, (int, np.integer)):
        _frame(h, b"int", str(int(obj)).encode())
    elif isinstance(obj, (float, np.floating)):
        value = float(obj)
        # 1.0 and 1 configure processors identically: hash integral floats as ints.
        if math.isfinite(value) and value.is_integer():
            _frame(h, b"int", str(int(value)).encode())
        else:
            _frame(h, b"float", repr(value).encode())
    elif isinstance(obj, str):
        _frame(h, b"str", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _frame(h, b"bytes", bytes(obj))
    elif isinstance(obj, Image.Image):
        _frame(h, b"image", b"")
        _update_image(h, obj)
    elif isinstance(obj, np.ndarray):
        _frame(h, b"array", b"")
        _update_array(h, obj)
    elif "torch" in sys.modules and isinstance(obj, sys.modules["torch"].Tensor):
        _frame(h, b"tensor", b"")
        _update_tensor(h, obj)
    elif isinstance(obj, Mapping):
        items = sorted(obj.items(), key=lambda kv: str(kv[0]))
        _frame(h, b"map", struct.pack("<Q", len(items)))
        for key, value in items:
            _update(h, str(key))
            _update(h, value)
    elif isinstance(obj, (list, tuple)):
        _frame(h, b"seq", struct.pack("<Q", len(obj)))
        for value in obj:
            _update(h, value)
    else:
        raise ValueError(f"cannot hash a value of type {type(obj).__name__}")


def hash_item(obj, **kwargs) -> str:
    """Stable content hash of one multimodal item and everything that shapes its processing.

    Args:
        obj: PIL image, numpy array, torch tensor, bytes, str, or a tuple/list/dict of those
            (e.g. ``(waveform, sampling_rate)``).
        **kwargs: Processor kwargs, the model id, ... (order does not matter).

    Returns:
        64-character sha256 hex digest, equal across processes for equal inputs.

    Raises:
        ValueError: A value of a type that has no stable content hash.
    """
    h = hashlib.sha256()
    _frame(h, b"mmcore-item-v1", b"")
    _update(h, obj)
    _update(h, kwargs)
    return h.hexdigest()


def hash_kwargs(kwargs: Mapping | None) -> str:
    """Stable sha256 hex digest of a kwargs mapping alone (None hashes as an empty mapping)."""
    h = hashlib.sha256()
    _frame(h, b"mmcore-kwargs-v1", b"")
    _update(h, dict(kwargs or {}))
    return h.hexdigest()
