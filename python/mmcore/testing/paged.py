"""A minimal paged KV cache owner for tests and benches (the engine's block manager is in C++).

It hands out blocks in a shuffled order so that a request's blocks are never contiguous, and
builds the :class:`~mmcore.layers.attention.AttentionMetadata` of a step.
"""

from __future__ import annotations

import torch

from mmcore.layers.attention import AttentionMetadata


class PagedKVCache:
    """KV caches of every layer plus per-request block tables.

    Args:
        model: an mmcore model (reads ``num_layers``, ``num_kv_heads``, ``head_dim``).
        num_blocks: blocks per layer.
        block_size: tokens per block.
        dtype, device: of the caches.
        seed: seeds the order blocks are handed out in.
    """

    def __init__(self, model, num_blocks: int, block_size: int, *, dtype, device, seed: int = 0):
        shape = (num_blocks, block_size, model.num_kv_heads, model.head_dim)
        self.kv_caches = [
            (
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(model.num_layers)
        ]
        self.block_size = block_size
        self.device = torch.device(device)
        order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
        self._free = order.tolist()
        self._tables: dict[object, list[int]] = {}

    def _ensure_blocks(self, request_id, num_tokens: int) -> list[int]:
        table = self._tables.setdefault(request_id, [])
        while len(table) * self.block_size < num_tokens:
            if not self._free:
                raise RuntimeError("PagedKVCache is out of blocks")
            table.append(self._free.pop())
        return table

    def free(self, request_id) -> None:
        """Return the request's blocks."""
        self._free.extend(self._tables.pop(request_id, []))

    def step(
        self, requests: list[tuple[object, int, int]]
    ) -> tuple[AttentionMetadata, torch.Tensor]:
        """Metadata and positions for one step.

        Args:
            requests: ``(request_id, num_cached_tokens, num_new_tokens)`` in batch order.

        Returns:
            (attention metadata, positions int64 ``[T]``), on the cache's device.
        """
        slots, positions, seq_lens, starts, tables = [], [], [], [0], []
        for request_id, num_cached, num_new in requests:
            seq_len = num_cached + num_new
            table = self._ensure_blocks(request_id, seq_len)
            for pos in range(num_cached, seq_len):
                slots.append(
                    table[pos // self.block_size] * self.block_size + pos % self.block_size
                )
            positions.extend(range(num_cached, seq_len))
            seq_lens.append(seq_len)
            starts.append(starts[-1] + num_new)
            tables.append(table)
        width = max(len(t) for t in tables)
        block_tables = torch.full((len(tables), width), -1, dtype=torch.int32)
        for b, table in enumerate(tables):
            block_tables[b, : len(table)] = torch.tensor(table, dtype=torch.int32)
        dev = self.device
        attn = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=block_tables.to(dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=dev),
            max_seq_len=max(seq_lens),
            max_query_len=max(b - a for a, b in zip(starts, starts[1:])),
            min_query_len=min(b - a for a, b in zip(starts, starts[1:])),
        )
        return attn, torch.tensor(positions, dtype=torch.int64, device=dev)
