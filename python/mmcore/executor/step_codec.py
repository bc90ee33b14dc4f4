"""A scheduler step (or a control message) as flat bytes for the shared-memory queue.

A step is the ``SchedulerOutput``'s integers and numpy arrays written back to back after a small
int64 header (no pickling; the arrays are already flat)::

    | kind | num ints | ints... | num arrays | per array: dtype code, ndim, dims (2), nbytes |
    | array 0 bytes | array 1 bytes | ...                                                    |

Both sides list the fields from the same ``mmcore._core.SchedulerOutput`` type, in name order,
so a field added to the core travels without a change here. Control messages (new requests,
cache set-up, shutdown) are rare and pickled.
"""

from __future__ import annotations

import functools
import pickle
from types import SimpleNamespace

import numpy as np
import torch

from mmcore import _core

KIND_STEP, KIND_CONTROL = 1, 2
_DTYPES = [np.dtype(t) for t in ("int32", "int64", "float32", "float64", "uint8", "bool")]
_CODES = {dt: i for i, dt in enumerate(_DTYPES)}
_MAX_DIMS = 2
_ARRAY_WORDS = 4 + _MAX_DIMS  # field, dtype code, ndim, dims, nbytes
# Driver-side additions to a step: requests it dropped, and the host masks of its sampling rows
# (grammar bitmask, multi-token bad-word bans; see :func:`host_mask_arrays`).
EXTRA_ARRAYS = ("removed_req_ids", "grammar_rows", "grammar_bitmask", "ban_rows", "ban_ids")


@functools.cache
def field_names() -> tuple[str, ...]:
    """Every field a step message may carry: the core's output fields, then ``EXTRA_ARRAYS``."""
    cls = _core.SchedulerOutput
    return tuple(sorted(n for n in dir(cls) if not n.startswith("_"))) + EXTRA_ARRAYS


def encode_step(out, extra: dict[str, np.ndarray]) -> list:
    """The byte parts of one step message (header first), for ``ShmBroadcastQueue.put``.

    Args:
        out: the ``SchedulerOutput``.
        extra: arrays named in ``EXTRA_ARRAYS`` (e.g. requests the engine dropped).
    """
    ints, arrays = [], []
    for index, name in enumerate(field_names()):
        value = extra[name] if name in extra else getattr(out, name, None)
        if isinstance(value, np.ndarray):
            arrays.append((index, np.ascontiguousarray(value)))
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            ints.append((index, int(value)))
    header = [KIND_STEP, len(ints)]
    for index, value in ints:
        header += [index, value]
    header.append(len(arrays))
    for index, value in arrays:
        if value.ndim > _MAX_DIMS:
            raise ValueError(f"step field {field_names()[index]} has {value.ndim} dims")
        dims = list(value.shape) + [0] * (_MAX_DIMS - value.ndim)
        header += [index, _CODES[value.dtype], value.ndim, *dims, value.nbytes]
    return [np.asarray(header, dtype=np.int64), *(value for _, value in arrays)]


def host_mask_arrays(masks) -> dict[str, np.ndarray]:
    """A step's :class:`~mmcore.sampling.host_masks.HostMasks` as step-message extras."""
    if masks is None:
        return {}
    extra = {"ban_rows": masks.ban_rows, "ban_ids": masks.ban_ids}
    if masks.bitmask is not None:
        extra["grammar_rows"] = masks.bitmask_rows
        extra["grammar_bitmask"] = masks.bitmask.numpy()
    return extra


def host_masks_of(step):
    """The :class:`~mmcore.sampling.host_masks.HostMasks` a decoded step carries, or None."""
    from mmcore.sampling.host_masks import HostMasks

    grammar_rows = getattr(step, "grammar_rows", None)
    ban_rows = getattr(step, "ban_rows", None)
    if grammar_rows is None and ban_rows is None:
        return None
    masks = HostMasks()
    if grammar_rows is not None:
        masks.bitmask_rows = grammar_rows.copy()
        masks.bitmask = torch.from_numpy(step.grammar_bitmask.copy())
    if ban_rows is not None:
        masks.ban_rows, masks.ban_ids = ban_rows.copy(), step.ban_ids.copy()
    return masks if masks else None


def removals_before(out, removed: list[int]) -> list[int]:
    """The dropped requests the workers forget before step ``out``: all but those still in it
    (dropped while it was prepared, e.g. a grammar that ended when the step before was
    applied); those go with the next step."""
    in_step = set(out.req_ids.tolist())
    return [r for r in removed if r not in in_step]


def encode_control(message) -> list:
    """The byte parts of a pickled control message."""
    return [np.asarray([KIND_CONTROL], dtype=np.int64), pickle.dumps(message, protocol=5)]


def decode(data: bytes):
    """``(KIND_STEP, step)`` or ``(KIND_CONTROL, message)`` from a message's bytes.

    The step is a namespace with the ``SchedulerOutput``'s attribute names (plus
    ``EXTRA_ARRAYS``), whose arrays are read-only views of ``data``: the runner reads it like
    the core's object.
    """
    words = np.frombuffer(data, np.int64, min(len(data) // 8, 1 << 16))
    if int(words[0]) == KIND_CONTROL:
        return KIND_CONTROL, pickle.loads(memoryview(data)[8:])
    names = field_names()
    fields = {}
    num_ints = int(words[1])
    pairs = words[2 : 2 + 2 * num_ints].reshape(num_ints, 2).tolist()
    fields.update((names[i], v) for i, v in pairs)
    pos = 2 + 2 * num_ints
    num_arrays = int(words[pos])
    specs = words[pos + 1 : pos + 1 + num_arrays * _ARRAY_WORDS].reshape(num_arrays, _ARRAY_WORDS)
    offset = (pos + 1 + num_arrays * _ARRAY_WORDS) * 8
    for index, code, ndim, *rest in specs.tolist():
        dims, nbytes = rest[:_MAX_DIMS], rest[_MAX_DIMS]
        dtype = _DTYPES[code]
        flat = np.frombuffer(data, dtype, nbytes // dtype.itemsize, offset)
        fields[names[index]] = flat.reshape(dims[:ndim])
        offset += nbytes
    return KIND_STEP, SimpleNamespace(**fields)
