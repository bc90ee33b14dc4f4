"""Vocabulary-parallel token embedding and LM head: each rank keeps a range of the vocabulary.

Rank ``r`` of ``n`` holds rows ``[r * per_rank, (r + 1) * per_rank)`` with
``per_rank = ceil(vocab / n)``; rows past the vocabulary (last rank) are zero padding::

    vocab:  | rank 0: 0 .. per-1 | rank 1: per .. 2per-1 | ... | last rank: ..vocab-1 | pad |

The embedding looks up the tokens in its range (zeros elsewhere) and sums over the ranks (one
all-reduce); the head computes its range's logits and gathers them on rank 0 only, where the
sampler runs. On one rank both are exactly ``nn.Embedding`` and the plain head GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcore.distributed.communication import all_reduce, gather_to_first
from mmcore.distributed.parallel_state import tp_rank, tp_size
from mmcore.layers.logits import logits_float32
from mmcore.layers.sharded_weights import WeightTarget


class VocabParallelEmbedding(nn.Module):
    """Token embedding ``[T] -> [T, hidden]`` with the vocabulary split over the ranks.

    Args:
        num_embeddings: vocabulary size.
        embedding_dim: hidden size.
        dtype, device: of the weight.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, dtype, device):
        super().__init__()
        self._rank, self._size = tp_rank(), tp_size()
        self.num_embeddings = num_embeddings
        self.per_rank = -(-num_embeddings // self._size)
        self.vocab_start = self._rank * self.per_rank
        self.num_valid = max(0, min(self.per_rank, num_embeddings - self.vocab_start))
        self.weight = nn.Parameter(
            torch.zeros(self.per_rank, embedding_dim, dtype=dtype, device=device)
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mine = (local >= 0) & (local < self.num_valid)
        out = F.embedding(local.masked_fill(~mine, 0), self.weight)
        return all_reduce(out.masked_fill(~mine[:, None], 0))

    def weight_targets(self, name: str) -> dict[str, WeightTarget]:
        """Checkpoint name -> this rank's vocabulary rows."""
        prefix = f"{name}." if name else ""
        full = (self.num_embeddings, self.weight.shape[1])
        dest = self.weight.narrow(0, 0, self.num_valid)
        return {f"{prefix}weight": WeightTarget(dest, f"{prefix}weight", full, 0, self.vocab_start)}

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """``hidden [N, H] @ weight.T`` as float32 ``[N, vocab]`` on rank 0 (None elsewhere):
        the LM head, or the tied head of a model whose head is its embedding."""
        local = logits_float32(hidden, self.weight)
        if self._size == 1:
            return local
        gathered = gather_to_first(local, dim=-1)
        return None if gathered is None else gathered[:, : self.num_embeddings]


class ParallelLMHead(VocabParallelEmbedding):
    """The LM head ``[N, hidden] -> float32 logits [N, vocab]``, gathered on rank 0 only
    (None on the other ranks). Args as for :class:`VocabParallelEmbedding`."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        return self.logits(hidden)
