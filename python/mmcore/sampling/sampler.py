"""Turns a batch of logits into tokens on the device, in vLLM's order:

    grammar bitmask -> (log-probabilities) -> allowed_token_ids, logit_bias, bad_words,
    min_tokens -> repetition / frequency / presence penalties -> greedy argmax, or
    temperature / top-k / top-p / min-p and a draw

Every step is batched over rows and runs on the device; per-row values travel through the
runner's pinned staging buffers, and nothing reads a device value back until ``resolve()``.
Random rows use one generator per request (on the device) so seeded requests are reproducible
in any batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mmcore.sampling.host_masks import HostMasks, apply_token_bitmask
from mmcore.sampling.logprobs import LogprobRequest, TokenLogprobs, gather_logprobs
from mmcore.sampling.penalties import apply_penalties
from mmcore.sampling.prompt_logprobs import PromptLogprobsChunk
from mmcore.sampling.request_state import DeviceCounts, RequestSampling
from mmcore.sampling_params import SamplingParams

ToDevice = Callable[[str, np.ndarray, torch.dtype], torch.Tensor]


@dataclass
class SampledBatch:
    """Tokens sampled for each row, and their log-probabilities where asked for."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]
    # (request id, first prompt position, log-probabilities per position) per request.
    prompt_logprobs: list[tuple[int, int, list[TokenLogprobs]]] = field(default_factory=list)


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


def _row_entries(
    rows: list[RequestSampling], attr: str
) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """(rows that have ``attr``, their row index per entry, the concatenated entries)."""
    picked = [(i, getattr(r, attr)) for i, r in enumerate(rows) if getattr(r, attr) is not None]
    if not picked:
        return None
    which = [i for i, _ in picked]
    lengths = [len(a) for _, a in picked]
    return which, np.repeat(np.arange(len(which)), lengths), np.concatenate([a for _, a in picked])


def _apply_token_edits(
    logits: torch.Tensor,
    rows: list[RequestSampling],
    counts: DeviceCounts | None,
    to_device: ToDevice,
    host_masks: HostMasks | None,
) -> torch.Tensor:
    """allowed_token_ids, logit_bias and single-token bad words, dynamic bans, min_tokens."""
    allowed = _row_entries(rows, "allowed_ids")
    if allowed is not None:
        which, local, ids = allowed
        mask = torch.full(
            (len(which), logits.shape[1]), float("-inf"), device=logits.device, dtype=logits.dtype
        )
        # A flat scatter: advanced-index assignment syncs the device on CUDA.
        flat = np.asarray(local) * logits.shape[1] + np.asarray(ids)
        mask.view(-1).scatter_(0, to_device("allowed_flat", flat, torch.long), 0.0)
        logits.index_add_(0, to_device("allowed_rows", np.array(which), torch.long), mask)
    bias = _row_entries(rows, "bias_ids")
    if bias is not None:
        which, local, ids = bias
        values = np.concatenate([rows[i].bias_values for i in which])
        flat = np.asarray(which)[local] * logits.shape[1] + ids
        logits.view(-1).scatter_add_(
            0,
            to_device("bias_flat", flat, torch.long),
            to_device("bias_values", values, logits.dtype),
        )
    if host_masks is not None and len(host_masks.ban_rows):
        flat = np.asarray(host_masks.ban_rows) * logits.shape[1] + np.asarray(host_masks.ban_ids)
        logits.view(-1).scatter_(0, to_device("ban_flat", flat, torch.long), float("-inf"))
    stops = _row_entries(rows, "min_tokens_stop_ids")
    if stops is not None and counts is not None:
        which, local, ids = stops
        slots = to_device("min_tokens_slots", np.array([rows[i].slot for i in which]), torch.long)
        limits = to_device(
            "min_tokens", np.array([rows[i].params.min_tokens for i in which]), torch.int32
        )
        too_early = counts.num_generated[slots] < limits  # [len(which)], on the device
        values = torch.where(too_early, float("-inf"), 0.0).to(logits.dtype)
        flat = np.asarray(which)[local] * logits.shape[1] + ids
        logits.view(-1).scatter_add_(
            0,
            to_device("min_tokens_flat", flat, torch.long),
            values[to_device("min_tokens_local", local, torch.long)],
        )
    return logits


def _apply_row_penalties(
    logits: torch.Tensor, rows: list[RequestSampling], counts: DeviceCounts, to_device: ToDevice
) -> torch.Tensor:
    which = [i for i, r in enumerate(rows) if r.params.has_penalties]
    if not which:
        return logits
    index = to_device("penalty_rows", np.array(which), torch.long)
    slots = to_device("penalty_slots", np.array([rows[i].slot for i in which]), torch.long)
    params = [rows[i].params for i in which]

    def per_row(name: str, attr: str) -> torch.Tensor:
        return to_device(name, np.array([getattr(p, attr) for p in params]), logits.dtype)

    logits[index] = apply_penalties(
        logits[index],
        counts.output_counts[slots],
        counts.prompt_mask[slots],
        per_row("repetition_penalty", "repetition_penalty"),
        per_row("frequency_penalty", "frequency_penalty"),
        per_row("presence_penalty", "presence_penalty"),
    )
    return logits


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are one device when 0 is the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def _exponential_noise(
    generators: list[torch.Generator], probs: torch.Tensor, to_device: ToDevice
) -> torch.Tensor:
    """Exp(1) noise ``[rows, vocab]``, row ``j`` drawn from ``generators[j]``.

    Generators on the logits' device draw in place (one small kernel per row, nothing crosses
    to the host); others (e.g. CPU generators with CUDA logits) draw on the host and are sent
    through the staging buffers.
    """
    noise = torch.empty_like(probs)
    on_device = [_same_device(g.device, probs.device) for g in generators]
    host_rows = [j for j, here in enumerate(on_device) if not here]
    for j, generator in enumerate(generators):
        if on_device[j]:
            noise[j].exponential_(generator=generator)
    if host_rows:
        drawn = torch.stack(
            [
                torch.empty(probs.shape[-1], dtype=probs.dtype).exponential_(
                    generator=generators[j]
                )
                for j in host_rows
            ]
        )
        index = to_device("noise_rows", np.array(host_rows), torch.long)
        noise[index] = to_device("noise", drawn.numpy(), probs.dtype)
    return noise


def sample_on_device(
    logits: torch.Tensor,
    rows: list[RequestSampling],
    *,
    counts: DeviceCounts | None = None,
    to_device: ToDevice | None = None,
    host_masks: HostMasks | None = None,
) -> PendingSample:
    """Pick one token per row of ``logits`` ``[N, vocab]`` without waiting for the device.

    Greedy rows take the argmax of the processed logits. Random rows race the filtered
    probabilities against Exp(1) noise drawn from the row's own generator (one per request,
    on the device, so a seeded request gives the same tokens in any batch).

    Args:
        logits: raw model logits, one row per request that samples this step.
        rows: each row's sampling inputs (:func:`rows_from_params` makes plain ones).
        counts: the device token counts (needed by rows with penalties or min_tokens); the
            sampled tokens are counted into it.
        to_device: ``(name, host array, dtype) -> device tensor`` for the small per-row arrays
            (e.g. the runner's pinned staging); default: a plain copy.
        host_masks: constraints filled on the host for this step (grammar bitmask, bans).

    Returns:
        The pending tokens; call ``resolve()`` for host values.
    """
    to_device = to_device or _plain_to_device(logits.device)
    # A copy: the edits below are in place, and the input may be a CUDA graph's output buffer.
    logits = logits.float() if logits.dtype != torch.float32 else logits.clone()
    if host_masks is not None and len(host_masks.bitmask_rows):
        apply_token_bitmask(logits, host_masks, to_device)
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
    log_probs = (
        logits[to_device("logprob_rows", np.array(wanted), torch.long)].log_softmax(-1)
        if wanted
        else None
    )
    logits = _apply_token_edits(logits, rows, counts, to_device, host_masks)
    if counts is not None:
        logits = _apply_row_penalties(logits, rows, counts, to_device)
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
    if random_rows:
        index = to_device("random_rows", np.array(random_rows), torch.long)
        probs = _filter_logits(logits[index], [rows[i].params for i in random_rows], to_device)
        probs = probs.softmax(dim=-1)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p.
        noise = _exponential_noise([rows[i].generator for i in random_rows], probs, to_device)
        tokens[index] = (probs / noise).argmax(dim=-1)
    counted = [i for i, r in enumerate(rows) if r.slot >= 0]
    if counted and counts is not None:
        counts.record(
            to_device("counted_slots", np.array([rows[i].slot for i in counted]), torch.long),
            tokens[to_device("counted_rows", np.array(counted), torch.long)],
        )
    logprobs = None
    if wanted:
        chosen = tokens[to_device("logprob_rows_again", np.array(wanted), torch.long)]
        logprobs = gather_logprobs(log_probs, chosen, [rows[i].params.logprobs for i in wanted])
    return PendingSample(tokens, wanted, logprobs)


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
    logprobs: LogprobRequest | None = None
    prompt_logprobs: PromptLogprobsChunk | None = None
    _host_tokens: torch.Tensor | None = None
    _copied: torch.cuda.Event | None = None

    def __post_init__(self) -> None:
        if self.token_ids.device.type != "cuda" or self.token_ids.numel() == 0:
            self._host_tokens = self.token_ids.cpu()
            return
        self._host_tokens = _to_pinned(self.token_ids)
        if self.logprobs is not None:
            self.logprobs.to_host()
        self._copied = torch.cuda.Event()
        self._copied.record()

    def attach_prompt_logprobs(self, chunk: PromptLogprobsChunk) -> None:
        """Add prompt log-probabilities computed in the same step (their copy is queued now)."""
        chunk.values.to_host()
        self.prompt_logprobs = chunk
        if chunk.values.chosen_ids.is_pinned():
            self._copied = self._copied or torch.cuda.Event()
            self._copied.record()

    def resolve(self) -> SampledBatch:
        """Wait for the tokens; return them and the log-probabilities on the host."""
        if self._copied is not None:
            self._copied.synchronize()
        token_list = self._host_tokens.tolist()
        logprobs: list[TokenLogprobs | None] = [None] * len(token_list)
        if self.logprobs is not None:
            for row, entry in zip(self.logprob_rows, self.logprobs.rows()):
                logprobs[row] = entry
        prompt = []
        if self.prompt_logprobs is not None:
            chunk, values = self.prompt_logprobs, self.prompt_logprobs.values.rows()
            start = 0
            for req_id, first, count in zip(chunk.req_ids, chunk.first_positions, chunk.counts):
                prompt.append((req_id, first, values[start : start + count]))
                start += count
        return SampledBatch(token_ids=token_list, logprobs=logprobs, prompt_logprobs=prompt)


def _to_pinned(tensor: torch.Tensor) -> torch.Tensor:
    """Enqueue a copy of a CUDA tensor into (cached) pinned host memory; read after a sync."""
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def rows_from_params(
    params: list[SamplingParams], generators: list[torch.Generator]
) -> list[RequestSampling]:
    """Plain per-row sampling inputs (no token edits, no count slots), e.g. for tests."""
    return [RequestSampling(params=p, generator=g) for p, g in zip(params, generators)]


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
) -> SampledBatch:
    """Pick one token per row of ``logits`` ``[N, vocab]`` (float32) and wait for them.

    Args:
        logits: raw model logits, one row per request that samples this step.
        params: the sampling parameters of each row (token edits and penalties need the
            engine's per-request state and are not applied here).
        generators: a ``torch.Generator`` per row; seeded requests own theirs, so their
            tokens do not depend on the rest of the batch.

    Returns:
        The chosen token ids, and per row the top-``logprobs`` log-probabilities of the
        distribution plus the chosen token's (None where not requested).
    """
    return sample_on_device(logits, rows_from_params(params, generators)).resolve()
