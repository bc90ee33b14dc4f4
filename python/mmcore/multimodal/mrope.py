"""M-RoPE positions of an expanded prompt whose vision items are (t, h, w) grids of embeddings.

Layout (HF ``get_rope_index`` of transformers 5.24, which is the oracle)::

    text      | vision item (t x h x w embeddings, row-major)            | text ...
    p..p+n-1  | temporal: start + floor(i_t * time_interval)             | next start = start
    (3 rows   | height:   start + i_h                                    |   + max(h, w)
     equal)   | width:    start + i_w                                    |

Generated token ``i`` (after a prompt of ``L`` tokens) sits at ``L + i + delta`` with
``delta = max(position) + 1 - L``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmcore.multimodal.processor import MRopePositions


@dataclass(frozen=True)
class VisionSpan:
    """One vision item in the expanded prompt.

    Attributes:
        offset: index of its first embedding token.
        grid_t, grid_h, grid_w: its embeddings as a grid, after any spatial merge.
        time_interval: temporal position step per grid_t (1 for images; Qwen2.5-VL videos:
            ``tokens_per_second * seconds per temporal patch``).
    """

    offset: int
    grid_t: int
    grid_h: int
    grid_w: int
    time_interval: float = 1.0

    @property
    def length(self) -> int:
        return self.grid_t * self.grid_h * self.grid_w


def _vision_positions(span: VisionSpan, start: int) -> np.ndarray:
    # float32 as HF multiplies an integer range by a float32 tensor, then truncates
    steps = np.arange(span.grid_t, dtype=np.float32) * np.float32(span.time_interval)
    temporal = steps.astype(np.int64) + start
    t, h, w = np.meshgrid(
        temporal,
        np.arange(span.grid_h, dtype=np.int64) + start,
        np.arange(span.grid_w, dtype=np.int64) + start,
        indexing="ij",
    )
    return np.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)])


def compute_mrope_positions(num_tokens: int, spans: list[VisionSpan]) -> MRopePositions:
    """3-row positions of a prompt of ``num_tokens`` tokens with vision items at ``spans``.

    Raises:
        ValueError: spans that overlap, are out of order or run past the prompt.
    """
    positions = np.empty((3, num_tokens), dtype=np.int64)
    cursor, current = 0, 0
    for span in spans:
        if span.offset < cursor or span.offset + span.length > num_tokens:
            raise ValueError(
                f"vision item at {span.offset} (+{span.length}) does not fit the prompt layout "
                f"({num_tokens} tokens, previous item ends at {cursor})"
            )
        text = span.offset - cursor
        positions[:, cursor : span.offset] = np.arange(text, dtype=np.int64) + current
        current += text
        end = span.offset + span.length
        positions[:, span.offset : end] = _vision_positions(span, current)
        current += max(span.grid_h, span.grid_w)
        cursor = end
    positions[:, cursor:] = np.arange(num_tokens - cursor, dtype=np.int64) + current
    delta = int(positions.max()) + 1 - num_tokens if num_tokens else 0
    return MRopePositions(positions=positions, delta=delta)
