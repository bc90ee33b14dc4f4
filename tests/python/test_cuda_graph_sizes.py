"""Which steps replay CUDA graphs, and the padded batch sizes they are captured for (no GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from mmcore.engine.cuda_graphs import is_decode_only, padded_batch_sizes


def test_padded_batch_sizes_cover_every_batch():
    sizes = padded_batch_sizes(256)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-1] == 256
    assert all(b - a <= 8 for a, b in zip(sizes, sizes[1:]))
    assert padded_batch_sizes(3) == [1, 2, 3]
    assert padded_batch_sizes(12) == [1, 2, 4, 8, 12]
    assert padded_batch_sizes(1) == [1]


def _step(num_reqs, num_tokens, encoder=0, scatter=0, logits=None, dims=1, positions=None):
    empty = np.zeros(0, dtype=np.int32)
    return SimpleNamespace(
        positions=positions,
        num_reqs=num_reqs,
        num_tokens=num_tokens,
        logits_indices=np.arange(num_reqs if logits is None else logits, dtype=np.int32),
        encoder_handles=np.arange(encoder, dtype=np.int32) if encoder else empty,
        scatter_handles=np.arange(scatter, dtype=np.int32) if scatter else empty,
        position_dims=dims,
    )


def test_only_pure_decode_steps_qualify():
    assert is_decode_only(_step(4, 4))
    assert not is_decode_only(_step(4, 9))  # a prefill chunk rides along
    assert not is_decode_only(_step(0, 0))
    assert not is_decode_only(_step(4, 4, encoder=1))
    assert not is_decode_only(_step(4, 4, scatter=1))
    assert not is_decode_only(_step(4, 4, logits=3))  # a request that does not sample
    # M-RoPE: generated tokens (all rows equal) replay graphs; a prompt's vision token does not
    same = np.tile(np.arange(4, dtype=np.int64), (3, 1))
    assert is_decode_only(_step(4, 4, dims=3, positions=same))
    vision = same.copy()
    vision[2, 1] += 1
    assert not is_decode_only(_step(4, 4, dims=3, positions=vision))
