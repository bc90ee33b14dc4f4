"""Turns a batch of logits into tokens: greedy, or temperature / top-k / top-p / min-p sampling
with one random generator per request so seeded requests are reproducible in any batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmcore.sampling_params import SamplingParams


@dataclass
class SampledBatch:
    """Tokens sampled for each row, and top log-probabilities where asked for."""

    token_ids: list[int]
    logprobs: list[dict[int, float] | None]


def _filter_logits(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Apply temperature, top-k, top-p and min-p row by row (vectorised over the batch)."""
    device = logits.device
    temperature = torch.tensor([max(p.temperature, 1e-5) for p in params], device=device)
    logits = logits / temperature[:, None]
    vocab = logits.shape[-1]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    min_p = torch.tensor([p.min_p for p in params], device=device)

    if bool((top_k < vocab).any()) or bool((top_p < 1.0).any()):
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=device)[None, :]
        drop = ranks >= top_k[:, None]
        probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        mass_before = probs.cumsum(dim=-1) - probs
        drop |= mass_before >= top_p[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
    if bool((min_p > 0).any()):
        probs = logits.softmax(dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * min_p[:, None]
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
) -> SampledBatch:
    """Pick one token per row of ``logits`` ``[N, vocab]`` (float32).

    Args:
        logits: raw model logits, one row per request that samples this step.
        params: the sampling parameters of each row.
        generators: a CPU ``torch.Generator`` per row; seeded requests own theirs, so their
            tokens do not depend on the rest of the batch.

    Returns:
        The chosen token ids, and per row the top-``logprobs`` log-probabilities of the raw
        distribution plus the chosen token's (None where not requested).
    """
    logits = logits.float()
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, p in enumerate(params) if not p.greedy]
    if random_rows:
        rows = torch.tensor(random_rows, device=logits.device)
        probs = _filter_logits(logits[rows], [params[i] for i in random_rows]).softmax(dim=-1)
        probs = probs.cpu()
        for j, i in enumerate(random_rows):
            # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p.
            noise = torch.empty_like(probs[j]).exponential_(generator=generators[i])
            tokens[i] = int((probs[j] / noise).argmax())
    token_list = tokens.tolist()

    logprobs: list[dict[int, float] | None] = [None] * len(params)
    wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
    if wanted:
        logp = logits[wanted].log_softmax(dim=-1).cpu()
        for j, i in enumerate(wanted):
            n = params[i].logprobs or 0
            entry: dict[int, float] = {}
            if n > 0:
                values, ids = logp[j].topk(n)
                entry = dict(zip(ids.tolist(), values.tolist()))
            entry[token_list[i]] = float(logp[j, token_list[i]])
            logprobs[i] = entry
    return SampledBatch(token_ids=token_list, logprobs=logprobs)
