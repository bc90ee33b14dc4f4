"""Logit transforms that depend on what a request has seen: repetition, frequency and presence
penalties, batched over rows on the device.

The repetition penalty is HF's ``RepetitionPenaltyLogitsProcessor`` (CTRL, Keskar et al. 2019)
over prompt and output tokens; frequency and presence penalties are OpenAI's definition over the
output tokens only::

    logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)
"""

from __future__ import annotations

import torch


def apply_penalties(
    logits: torch.Tensor,
    output_counts: torch.Tensor,
    prompt_mask: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Penalised logits of rows ``[R, vocab]``.

    Args:
        logits: float logits of the rows.
        output_counts: ``[R, vocab]`` how often each token was generated (int).
        prompt_mask: ``[R, vocab]`` bool, the tokens of each row's prompt.
        repetition: ``[R]`` repetition penalties (1 = off).
        frequency: ``[R]`` frequency penalties.
        presence: ``[R]`` presence penalties.

    Returns:
        New logits (the input is not modified).
    """
    generated = output_counts > 0
    seen = generated | prompt_mask
    factor = torch.where(seen, repetition[:, None], torch.ones_like(logits))
    logits = torch.where(logits > 0, logits / factor, logits * factor)
    logits = logits - frequency[:, None] * output_counts.to(logits.dtype)
    return logits - presence[:, None] * generated.to(logits.dtype)
