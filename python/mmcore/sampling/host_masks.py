"""Constraints that depend on the tokens generated so far and are computed on the host: the
grammar token bitmask (structured outputs) and multi-token bad words.

The engine fills them for step N+1 while the device runs step N's forward (and, with overlapped
scheduling, step N+1's forward), then the sampler applies them on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

_BITS = 32


@dataclass
class HostMasks:
    """One step's host-computed constraints, by row of the step's logits.

    Attributes:
        bitmask_rows: rows that follow a grammar.
        bitmask: ``[len(bitmask_rows), ceil(vocab / 32)]`` int32; bit ``t % 32`` of word
            ``t // 32`` set means token ``t`` is allowed (xgrammar's layout).
        ban_rows: row of each banned (row, token) pair.
        ban_ids: token of each pair.
    """

    bitmask_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bitmask: torch.Tensor | None = None
    ban_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ban_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __bool__(self) -> bool:
        return bool(len(self.bitmask_rows) or len(self.ban_rows))


def apply_token_bitmask(
    logits: torch.Tensor,
    masks: HostMasks,
    to_device: Callable[[str, np.ndarray, torch.dtype], torch.Tensor],
) -> None:
    """Set the logits of tokens a row's bitmask forbids to -inf, in place, on the device.

    The bits are unpacked with a few elementwise ops (any device, CUDA-graph safe), rather than
    a Triton or JIT-compiled kernel that would need compiling on first use.
    """
    vocab = logits.shape[-1]
    rows = to_device("bitmask_rows", masks.bitmask_rows, torch.long)
    words = to_device("bitmask", masks.bitmask.numpy(), torch.int32)
    shifts = torch.arange(_BITS, device=logits.device, dtype=torch.int32)
    allowed = ((words[:, :, None] >> shifts) & 1).bool().reshape(len(rows), -1)[:, :vocab]
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))


def bad_word_bans(
    rows: list[tuple[int, list[tuple[list[int], int]], list[int]]],
) -> tuple[np.ndarray, np.ndarray]:
    """(row, token) pairs banned by multi-token bad words, given each row's generated tokens.

    Args:
        rows: per constrained row: (row index, its (prefix, last token) pairs, its output ids).

    Returns:
        ``(ban_rows, ban_ids)`` int64 arrays.
    """
    ban_rows, ban_ids = [], []
    for row, prefixes, output_ids in rows:
        for prefix, last in prefixes:
            if (
                len(output_ids) >= len(prefix)
                and output_ids[len(output_ids) - len(prefix) :] == prefix
            ):
                ban_rows.append(row)
                ban_ids.append(last)
    return np.asarray(ban_rows, dtype=np.int64), np.asarray(ban_ids, dtype=np.int64)
