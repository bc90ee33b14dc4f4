"""Sizes the GPU KV cache from a profiled worst-case step: what is left after weights + peak."""

from __future__ import annotations

import torch

from mmcore.engine.kv_cache import allocate_kv_caches, kv_bytes_per_block
from mmcore.layers.attention import AttentionMetadata


def _dummy_encoder_inputs(
    processor, encoder_budget: int, limits: dict[str, int] | None = None
) -> dict[str, list[dict]]:
    """Per modality, as many of its largest dummy items as one step's encoder budget takes
    (each at most ``encoder_budget`` embeddings, as many as ``limit_mm_per_prompt`` allows)."""
    inputs = {}
    for modality in processor.supported_modalities:
        limit = (limits or {}).get(modality)
        if limit == 0:
            continue
        largest = processor.dummy_items(modality, 1, encoder_budget)
        per_item = max(1, processor.num_embeds(modality, largest[0]))
        count = max(1, encoder_budget // per_item)
        items = processor.dummy_items(modality, count, encoder_budget)
        inputs[modality] = processor.process(modality, items)
    return inputs


def _dummy_attention(
    num_tokens: int, max_model_len: int, block_size: int, device: torch.device
) -> tuple[AttentionMetadata, torch.Tensor, int]:
    """``num_tokens`` new tokens split into prompts of at most ``max_model_len`` (full prefill).

    Returns:
        The metadata, the positions and the number of KV blocks the prompts use.
    """
    lens = [max_model_len] * (num_tokens // max_model_len)
    if num_tokens % max_model_len:
        lens.append(num_tokens % max_model_len)
    blocks_per_seq = [-(-n // block_size) for n in lens]
    width = max(blocks_per_seq)
    tables = torch.full((len(lens), width), -1, dtype=torch.int32)
    first = 0
    for b, count in enumerate(blocks_per_seq):
        tables[b, :count] = torch.arange(first, first + count, dtype=torch.int32)
        first += count
    starts = torch.tensor([0, *lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lens])
    slots = torch.cat(
        [tables[b, positions[s:e] // block_size] * block_size + positions[s:e] % block_size
         for b, (s, e) in enumerate(zip(starts[:-1].tolist(), starts[1:].tolist()))]
    )  # fmt: skip
    attn = AttentionMetadata(
        slot_mapping=slots.to(device, torch.long),
        block_tables=tables.to(device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        query_start_loc=starts.to(device),
        max_seq_len=max(lens),
        max_query_len=max(lens),
        min_query_len=min(lens),
    )
    return attn, positions.to(device), first


@torch.inference_mode()
def profile_peak_activation_bytes(
    model,
    processor,
    *,
    num_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    block_size: int,
    encoder_budget: int,
    kv_dtype: torch.dtype,
    limit_mm_per_prompt: dict[str, int] | None = None,
) -> int:
    """Peak GPU bytes of one worst-case step beyond the weights and its own KV blocks.

    The step encodes the largest dummy multimodal items the encoder budget allows, then runs the
    LM over ``num_tokens`` prefill tokens and computes logits for ``max_num_seqs`` rows.

    Args:
        model: the mmcore model, on a CUDA device.
        processor: its multimodal processor (for ``dummy_items``).
        num_tokens: ``max_num_batched_tokens``.
        max_num_seqs: most rows sampled in one step.
        max_model_len: longest sequence (splits the dummy prefill).
        block_size: tokens per KV block.
        encoder_budget: most encoder embeddings in one step.
        kv_dtype: dtype of the KV cache.
        limit_mm_per_prompt: a modality limited to 0 items is not profiled.

    Returns:
        Peak allocated bytes during the step minus what was allocated before it (weights) and
        minus the temporary KV cache the step wrote into.
    """
    first = next(model.parameters())
    device = first.device
    encoder_inputs = _dummy_encoder_inputs(processor, encoder_budget, limit_mm_per_prompt)
    attn, positions, num_blocks = _dummy_attention(num_tokens, max_model_len, block_size, device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    kv_caches = allocate_kv_caches(model, num_blocks, block_size, kv_dtype, device, zero=False)
    kv_bytes = num_blocks * kv_bytes_per_block(model, block_size, kv_dtype)
    torch.cuda.reset_peak_memory_stats(device)
    for modality, data in encoder_inputs.items():
        on_device = [
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in item.items()}
            for item in data
        ]
        model.encode(modality, on_device)
    ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
    hidden = model.forward(model.embed_tokens(ids), positions, kv_caches, attn)
    rows = torch.arange(min(max_num_seqs, num_tokens), device=device)
    logits = model.compute_logits(hidden[rows])  # None on tensor-parallel ranks but rank 0
    if logits is not None:
        logits.argmax(dim=-1)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before - kv_bytes
    del kv_caches, hidden
    torch.cuda.empty_cache()
    return max(0, int(peak))


def gpu_kv_cache_bytes(device: torch.device, utilization: float, peak_activation: int) -> int:
    """KV bytes that keep the engine within ``utilization`` of the card.

    Args:
        device: the CUDA device (weights already on it, profile step done).
        utilization: fraction of total memory the engine may use, in (0, 1].
        peak_activation: from :func:`profile_peak_activation_bytes`.

    Returns:
        ``utilization * total - (memory in use now: context, weights, other processes) - peak``.
    """
    if not 0.0 < utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return max(0, int(total * utilization) - (total - free) - peak_activation)
