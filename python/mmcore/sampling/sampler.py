"""Turns a batch of logits into tokens: greedy, or temperature / top-k / top-p / min-p sampling
with one random generator per request so seeded requests are reproducible in any batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmcore.sampling_params import SamplingParams


@dataclass
class SampledBatch:
    """Tokens sampled for each row, and top log-probabilities where asked for."""

    token_ids: list[int]
    logprobs: list[dict[int, float] | None]


ToDevice = Callable[[str, np.ndarray, torch.dtype], torch.Tensor]


def _plain_to_device(device: torch.device) -> ToDevice:
    return lambda _name, array, dtype: torch.from_numpy(np.ascontiguousarray(array)).to(
        device, dtype
    )


def _filter_logits(
    logits: torch.Tensor, params: list[SamplingParams], to_device: ToDevice | None = None
) -> torch.Tensor:
    """Apply temperature, top-k, top-p and min-p row by row (vectorised over the batch).

    Which filters run is decided from the host-side parameters, so no device value is read.
    """
    to_device = to_device or _plain_to_device(logits.device)
    vocab = logits.shape[-1]
    temperature = to_device(
        "temperature", np.array([max(p.temperature, 1e-5) for p in params]), logits.dtype
    )
    logits = logits / temperature[:, None]
    use_top_k = any(0 < p.top_k < vocab for p in params)
    use_top_p = any(p.top_p < 1.0 for p in params)
    if use_top_k or use_top_p:
        top_k = to_device(
            "top_k", np.array([p.top_k if p.top_k > 0 else vocab for p in params]), torch.long
        )
        top_p = to_device("top_p", np.array([p.top_p for p in params]), logits.dtype)
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        drop = ranks >= top_k[:, None]
        probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        mass_before = probs.cumsum(dim=-1) - probs
        drop |= mass_before >= top_p[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)
    if any(p.min_p > 0 for p in params):
        min_p = to_device("min_p", np.array([p.min_p for p in params]), logits.dtype)
        probs = logits.softmax(dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * min_p[:, None]
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


@dataclass
class PendingSample:
    """One step's sampled tokens, still on the device (nothing has waited for them yet).

    ``token_ids`` can feed the next step's input ids on the device. On CUDA, creating it
    enqueues the copies of the tokens (and log-probabilities) into pinned host memory right
    behind the sampling kernels, so :meth:`resolve` waits for this step only, not for steps
    launched after it on the same stream.
    """

    token_ids: torch.Tensor  # [N] int64 on the device
    logprob_rows: list[int]  # rows that asked for log-probabilities
    logprob_counts: list[int]  # top-n of each such row
    log_probs: torch.Tensor | None  # [len(logprob_rows), vocab] log-softmax, on the device
    _host_tokens: torch.Tensor | None = None
    _host_log_probs: torch.Tensor | None = None
    _copied: torch.cuda.Event | None = None

    def __post_init__(self) -> None:
        if self.token_ids.device.type != "cuda" or self.token_ids.numel() == 0:
            self._host_tokens, self._host_log_probs = self.token_ids.cpu(), self.log_probs
            return
        self._host_tokens = _to_pinned(self.token_ids)
        if self.log_probs is not None:
            self._host_log_probs = _to_pinned(self.log_probs)
        self._copied = torch.cuda.Event()
        self._copied.record()

    def resolve(self) -> SampledBatch:
        """Wait for the tokens; return them and the log-probabilities on the host."""
        if self._copied is not None:
            self._copied.synchronize()
        token_list = self._host_tokens.tolist()
        logprobs: list[dict[int, float] | None] = [None] * len(token_list)
        if self.logprob_rows:
            logp = self._host_log_probs.cpu()
            for j, (i, n) in enumerate(zip(self.logprob_rows, self.logprob_counts)):
                entry: dict[int, float] = {}
                if n > 0:
                    values, ids = logp[j].topk(n)
                    entry = dict(zip(ids.tolist(), values.tolist()))
                entry[token_list[i]] = float(logp[j, token_list[i]])
                logprobs[i] = entry
        return SampledBatch(token_ids=token_list, logprobs=logprobs)


def _to_pinned(tensor: torch.Tensor) -> torch.Tensor:
    """Enqueue a copy of a CUDA tensor into (cached) pinned host memory; read after a sync."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def sample_on_device(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    to_device: ToDevice | None = None,
) -> PendingSample:
    """Pick one token per row of ``logits`` ``[N, vocab]`` without waiting for the device.

    Greedy rows take the argmax on the device. Random rows race the filtered probabilities
    against Exp(1) noise drawn on the host from the row's CPU generator (so seeded requests give
    the same tokens on any device and in any batch) and sent to the device.

    Args:
        logits: raw model logits, one row per request that samples this step.
        params: the sampling parameters of each row.
        generators: a CPU ``torch.Generator`` per row.
        to_device: ``(name, host array, dtype) -> device tensor`` for the small per-row arrays
            (e.g. the runner's pinned staging); default: a plain copy.

    Returns:
        The pending tokens; call ``resolve()`` for host values.
    """
    to_device = to_device or _plain_to_device(logits.device)
    logits = logits.float()
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, p in enumerate(params) if not p.greedy]
    if random_rows:
        rows = to_device("random_rows", np.array(random_rows), torch.long)
        probs = _filter_logits(logits[rows], [params[i] for i in random_rows], to_device).softmax(
            dim=-1
        )
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p.
        noise = torch.stack(
            [
                torch.empty(probs.shape[-1], dtype=probs.dtype).exponential_(
                    generator=generators[i]
                )
                for i in random_rows
            ]
        )
        noise = to_device("noise", noise.numpy(), probs.dtype)
        tokens[rows] = (probs / noise).argmax(dim=-1)
    wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
    log_probs = logits[wanted].log_softmax(dim=-1) if wanted else None
    return PendingSample(
        token_ids=tokens,
        logprob_rows=wanted,
        logprob_counts=[params[i].logprobs or 0 for i in wanted],
        log_probs=log_probs,
    )


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
) -> SampledBatch:
    """Pick one token per row of ``logits`` ``[N, vocab]`` (float32) and wait for them.

    Args:
        logits: raw model logits, one row per request that samples this step.
        params: the sampling parameters of each row.
        generators: a CPU ``torch.Generator`` per row; seeded requests own theirs, so their
            tokens do not depend on the rest of the batch.

    Returns:
        The chosen token ids, and per row the top-``logprobs`` log-probabilities of the raw
        distribution plus the chosen token's (None where not requested).
    """
    return sample_on_device(logits, params, generators).resolve()
