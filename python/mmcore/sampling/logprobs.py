"""Log-probabilities of chosen tokens and the top-k alternatives, reduced on the device.

Only ``[rows, k]`` values travel to the host, never a ``[rows, vocab]`` matrix (unless the
whole vocabulary was asked for with ``-1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenLogprobs:
    """One position's log-probabilities: the chosen (or actual) token first, then the top-k.

    Attributes:
        token_ids: the chosen token, then the top-k ids (most likely first).
        logprobs: their log-probabilities.
        ranks: their 1-based ranks in the distribution.
    """

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]


@dataclass
class LogprobRequest:
    """Device tensors of a batch of positions; :meth:`to_host` queues their copies.

    Attributes:
        chosen_ids: ``[R]`` the token whose log-probability is reported at each position.
        chosen_logprobs: ``[R]`` its log-probability.
        chosen_ranks: ``[R]`` its rank.
        top_ids: ``[R, kmax]`` the most likely tokens.
        top_logprobs: ``[R, kmax]`` their log-probabilities.
        num_top: per position, how many of the top-k to report.
    """

    chosen_ids: torch.Tensor
    chosen_logprobs: torch.Tensor
    chosen_ranks: torch.Tensor
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    num_top: list[int]

    _FIELDS = ("chosen_ids", "chosen_logprobs", "chosen_ranks", "top_ids", "top_logprobs")

    def to_host(self) -> None:
        """Queue non-blocking copies into pinned memory (CUDA); valid after the step's event."""
        for name in self._FIELDS:
            tensor = getattr(self, name)
            if tensor.is_cuda:
                host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host.copy_(tensor, non_blocking=True)
                setattr(self, name, host)

    def rows(self) -> list[TokenLogprobs]:
        """Host values per position (after the copies completed)."""
        chosen = self.chosen_ids.tolist()
        chosen_lp = self.chosen_logprobs.tolist()
        chosen_rank = self.chosen_ranks.tolist()
        top_ids = self.top_ids.tolist()
        top_lp = self.top_logprobs.tolist()
        out = []
        for r, k in enumerate(self.num_top):
            out.append(
                TokenLogprobs(
                    token_ids=[chosen[r]] + top_ids[r][:k],
                    logprobs=[chosen_lp[r]] + top_lp[r][:k],
                    ranks=[chosen_rank[r]] + list(range(1, k + 1)),
                )
            )
        return out


def gather_logprobs(
    log_probs: torch.Tensor, chosen: torch.Tensor, num_top: list[int | None]
) -> LogprobRequest:
    """Reduce ``[R, vocab]`` log-probabilities to the chosen token's and the top-k.

    Args:
        log_probs: log-softmax rows on the device.
        chosen: ``[R]`` token ids (sampled, or the next prompt token).
        num_top: per row, k (-1: the whole vocabulary; None or 0: only the chosen token).

    Returns:
        The reduced tensors (still on the device).
    """
    vocab = log_probs.shape[-1]
    ks = [vocab if k == -1 else (k or 0) for k in num_top]
    kmax = max(ks, default=0)
    chosen_lp = log_probs.gather(-1, chosen[:, None]).squeeze(-1)
    # Rank: 1 + how many tokens are strictly more likely (vLLM's definition).
    ranks = (log_probs > chosen_lp[:, None]).sum(-1) + 1
    if kmax > 0:
        top_lp, top_ids = log_probs.topk(min(kmax, vocab), dim=-1)
    else:
        top_lp = log_probs.new_empty((log_probs.shape[0], 0))
        top_ids = chosen.new_empty((log_probs.shape[0], 0))
    return LogprobRequest(chosen, chosen_lp, ranks, top_ids, top_lp, ks)
