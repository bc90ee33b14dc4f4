"""CUDA graphs of decode-only steps (one new token per request), captured at start-up.

A decode step of a 7B model launches hundreds of small kernels; replaying a captured graph
removes their host launch cost. Graphs are captured for padded batch sizes (1, 2, 4, 8, then
multiples of 8 up to ``max_num_seqs``) over static input buffers; a step is padded up to the
next captured size. Pad rows write no KV (slot -1), attend one key of block 0 and are dropped.
Steps with prefill tokens, encoder work or a batch larger than the largest graph run eagerly.
M-RoPE decode steps replay the same graphs: generated tokens sit at one position in all three
rows, so the first row is the 1-D position the rotary layer takes.
Hybrid KV caches (:mod:`mmcore.engine.kv_groups`) capture every group's block tables and slot
mapping as static buffers too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from mmcore.engine.kv_groups import KVCacheGroups
from mmcore.engine.staging import HostStaging
from mmcore.layers.attention import AttentionMetadata


def padded_batch_sizes(max_num_seqs: int) -> list[int]:
    """Captured batch sizes: 1, 2, 4, 8, 16, 24, ... up to and including ``max_num_seqs``."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs]
    sizes += list(range(8, max_num_seqs, 8))
    return sorted(set(sizes + [max_num_seqs]))


def is_decode_only(out) -> bool:
    """True when every scheduled request gets exactly one token and no encoder work runs."""
    return (
        out.num_tokens > 0
        and out.num_tokens == out.num_reqs
        and len(out.logits_indices) == out.num_tokens
        and len(out.encoder_handles) == 0
        and len(out.scatter_handles) == 0
        and (out.position_dims == 1 or _rows_equal(out.positions))
    )


def _rows_equal(positions: np.ndarray) -> bool:
    """True when the 3 M-RoPE rows of a step agree (every token past its prompt)."""
    return bool((positions[1:] == positions[0]).all())


class DecodeGraphs:
    """Captured decode steps of one model over its KV caches.

    Args:
        model: the mmcore model (CUDA).
        kv_caches: the runner's per-layer (key, value) caches.
        max_num_seqs: largest batch to capture.
        max_blocks_per_seq: block-table width (``ceil(max_model_len / block_size)``).
        max_seq_len: bound on sequence lengths given to the attention kernel at capture.
        staging: the runner's pinned host buffers.
        logits_in_graph: capture the LM head too (else :meth:`run` returns hidden states).
        kv_groups: the KV cache groups (None: one group).
    """

    def __init__(
        self,
        model,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        *,
        max_num_seqs: int,
        max_blocks_per_seq: int,
        max_seq_len: int,
        staging: HostStaging,
        logits_in_graph: bool = True,
        kv_groups: KVCacheGroups | None = None,
    ) -> None:
        self.model = model
        self.logits_in_graph = logits_in_graph
        self.kv_caches = kv_caches
        self.staging = staging
        self.sizes = padded_batch_sizes(max_num_seqs)
        n, dev = self.sizes[-1], next(model.parameters()).device
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros((n, max_blocks_per_seq), dtype=torch.int32, device=dev)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self.kv_groups = kv_groups if kv_groups is not None and kv_groups.hybrid else None
        extra = self.kv_groups.num_groups - 1 if self.kv_groups else 0
        self.group_slot_mapping = torch.full((extra, n), -1, dtype=torch.long, device=dev)
        self.group_block_tables = torch.zeros(
            (extra, n, max_blocks_per_seq), dtype=torch.int32, device=dev
        )
        self.max_seq_len = max_seq_len
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    def _forward(self, size: int) -> torch.Tensor:
        attn = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            seq_lens=self.seq_lens[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            max_seq_len=self.max_seq_len,
            max_query_len=1,
            min_query_len=1,
        )
        if self.kv_groups is not None:
            attn.groups = [attn] + [
                dataclasses.replace(
                    attn,
                    slot_mapping=self.group_slot_mapping[g, :size],
                    block_tables=self.group_block_tables[g, :size],
                )
                for g in range(self.kv_groups.num_groups - 1)
            ]
            attn.layer_group = self.kv_groups.layer_group
        embeds = self.model.embed_tokens(self.input_ids[:size])
        hidden = self.model.forward(embeds, self.positions[:size], self.kv_caches, attn)
        return self.model.compute_logits(hidden) if self.logits_in_graph else hidden

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first, into one shared memory pool."""
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for size in reversed(self.sizes):
                self._forward(size)  # warm-up: lazy cuBLAS handles and workspaces
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.logits[size] = self._forward(size)
                pool = graph.pool()
                self.graphs[size] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def can_run(self, out) -> bool:
        """Whether ``out`` is a decode-only step within the captured sizes."""
        return (
            bool(self.graphs)
            and is_decode_only(out)
            and out.num_reqs <= self.sizes[-1]
            and out.block_tables.shape[1] <= self.block_tables.shape[1]
        )

    def run(self, out, input_ids: torch.Tensor) -> torch.Tensor:
        """Replay the graph of the smallest size >= the batch; return its ``[B, vocab]`` logits
        (its hidden states ``[B, hidden]`` when the LM head is not in the graph).

        Args:
            out: the decode-only step.
            input_ids: its input ids, already on the device (unknown ids filled in).
        """
        batch = out.num_reqs
        size = next(s for s in self.sizes if s >= batch)
        width = out.block_tables.shape[1]
        self.input_ids[:batch].copy_(input_ids)
        first_row = out.positions.reshape(out.position_dims, -1)[0]
        self.staging.copy_into("positions", first_row, self.positions[:batch])
        self.staging.copy_into("slot_mapping", out.slot_mapping, self.slot_mapping[:batch])
        self.staging.copy_into("seq_lens", out.seq_lens, self.seq_lens[:batch])
        self.staging.copy_into(
            "block_tables", np.asarray(out.block_tables), self.block_tables[:batch, :width]
        )
        if self.kv_groups is not None:
            extra = self.kv_groups.num_groups - 1
            self.staging.copy_into(
                "group_slot_mapping",
                np.asarray(out.group_slot_mapping),
                self.group_slot_mapping[:, :batch],
            )
            tables = np.asarray(out.group_block_tables).reshape(batch, extra, width)
            tables = tables.transpose(1, 0, 2)  # request-major rows -> per group
            self.staging.copy_into(
                "group_block_tables", tables, self.group_block_tables[:, :batch, :width]
            )
        if size > batch:  # pad rows: no KV write, one key of block 0
            self.slot_mapping[batch:size].fill_(-1)
            self.seq_lens[batch:size].fill_(1)
            self.block_tables[batch:size, 0].fill_(0)
            self.group_slot_mapping[:, batch:size].fill_(-1)
            self.group_block_tables[:, batch:size, 0].fill_(0)
        self.graphs[size].replay()
        return self.logits[size][:batch]
