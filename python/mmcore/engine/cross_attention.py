"""The runner's side of encoder-decoder steps: the core's cross-attention arrays as tensors.

Each query token attends to its request's cross K/V as a one-token sequence (see
:mod:`mmcore.models.whisper.decoder`), so the per-request cross block tables and lengths are
repeated per token here; the encoder outputs of the requests whose cross K/V this step writes
are taken from the encoder cache by handle.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mmcore.engine.fault_isolation import RequestFault
from mmcore.layers.attention import CrossAttentionMetadata


def build_cross_metadata(
    out,
    encoder_cache: dict[int, torch.Tensor],
    to_device: Callable[[str, np.ndarray, torch.dtype], torch.Tensor],
) -> CrossAttentionMetadata | None:
    """The step's :class:`CrossAttentionMetadata`, or None when no request cross-attends.

    Args:
        out: the step's SchedulerOutput.
        encoder_cache: encoder outputs by handle (the runner's).
        to_device: ``(name, host array, dtype) -> device tensor`` (the runner's staging).

    Raises:
        RequestFault: naming a request whose encoder output is missing (its encoding failed).
    """
    if len(out.cross_seq_lens) == 0:
        return None
    owners = np.repeat(np.arange(out.num_reqs), out.num_scheduled_tokens)
    lens = np.ascontiguousarray(out.cross_seq_lens[owners])
    fill_states = fill_slots = None
    if len(out.cross_fill_rows):
        states = []
        for row, handle in zip(out.cross_fill_rows.tolist(), out.cross_fill_handles.tolist()):
            state = encoder_cache.get(handle)
            if state is None:
                raise RequestFault(
                    [int(out.req_ids[row])], RuntimeError("the encoder output is missing")
                )
            states.append(state)
        fill_states = torch.cat(states)
        fill_slots = to_device("cross_slot_mapping", out.cross_slot_mapping, torch.long)
    return CrossAttentionMetadata(
        block_tables=to_device(
            "cross_block_tables", np.ascontiguousarray(out.cross_block_tables[owners]), torch.int32
        ),
        seq_lens=to_device("cross_seq_lens", lens, torch.int32),
        query_start_loc=to_device(
            "cross_query_start_loc", np.arange(len(owners) + 1, dtype=np.int32), torch.int32
        ),
        max_seq_len=int(lens.max()),
        fill_states=fill_states,
        fill_slot_mapping=fill_slots,
    )
