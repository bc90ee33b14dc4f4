"""Prompt log-probabilities: for each prompt position after the first, the log-probability of
the actual prompt token (and the top-k) under the model, from the step that computes it.

A prompt chunk of ``n`` tokens starting at position ``s`` gives the rows predicting positions
``s + 1 .. s + n`` (those inside the prompt)::

    positions:   s     s+1    ...   s+n-1 | s+n
    rows:        q     q+1    ...   q+n-1
    predicts:    s+1   s+2    ...   s+n    (kept while < prompt length)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmcore.sampling.logprobs import LogprobRequest, gather_logprobs


@dataclass
class PromptLogprobsChunk:
    """Prompt log-probabilities of several requests computed in one step.

    Attributes:
        req_ids: the requests, in row order.
        first_positions: per request, the prompt position its first row predicts.
        counts: per request, how many positions it got.
        values: the reduced log-probabilities of all rows.
    """

    req_ids: list[int]
    first_positions: list[int]
    counts: list[int]
    values: LogprobRequest


def compute_prompt_logprobs(
    model, hidden: torch.Tensor, out, wanted: dict[int, tuple[np.ndarray, int]], to_device
) -> PromptLogprobsChunk | None:
    """Log-probabilities of the prompt tokens this step's chunks predict.

    Args:
        model: the model (its ``compute_logits``).
        hidden: ``[num_tokens, hidden]`` last hidden states of the step.
        out: the step's SchedulerOutput.
        wanted: request id -> (its prompt token ids, top-k) for requests asking for them.
        to_device: the runner's staging copy.

    Returns:
        The chunk, or None when no scheduled request needs any (and on tensor-parallel ranks
        other than 0, which take part in the logits gather but get no logits).
    """
    if not wanted:
        return None
    rows, targets, top = [], [], []
    req_ids, firsts, counts = [], [], []
    starts = out.query_start_loc
    for i, req_id in enumerate(out.req_ids.tolist()):
        entry = wanted.get(req_id)
        if entry is None:
            continue
        prompt, k = entry
        first = int(out.num_computed_tokens[i])
        end = min(first + int(out.num_scheduled_tokens[i]), len(prompt) - 1)
        if end <= first:
            continue
        rows.append(np.arange(starts[i], starts[i] + end - first))
        targets.append(prompt[first + 1 : end + 1])
        top.extend([k] * (end - first))
        req_ids.append(req_id)
        firsts.append(first + 1)
        counts.append(end - first)
    if not rows:
        return None
    index = to_device("prompt_logprob_rows", np.concatenate(rows), torch.long)
    logits = model.compute_logits(hidden[index])  # a collective: every rank calls it
    if logits is None:
        return None
    log_probs = logits.float().log_softmax(-1)
    chosen = to_device("prompt_logprob_targets", np.concatenate(targets), torch.long)
    return PromptLogprobsChunk(req_ids, firsts, counts, gather_logprobs(log_probs, chosen, top))
