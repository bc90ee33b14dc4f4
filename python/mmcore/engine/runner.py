"""Runs one scheduler step on the model: encoder, scatter, LM forward, sampling.

The runner never walks request objects: it reads the step's flat arrays (SchedulerOutput) and
keeps only what the model needs across steps — the KV caches, the encoder outputs by handle, and
each request's multimodal items and sampling state.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from mmcore.distributed.communication import all_gather_varlen, broadcast_from_first
from mmcore.distributed.parallel_state import encoder_tp_disabled, tp_rank, tp_size
from mmcore.engine.cross_attention import build_cross_metadata
from mmcore.engine.cuda_graphs import DecodeGraphs
from mmcore.engine.fault_isolation import RequestFault, find_faulty, is_out_of_memory
from mmcore.engine.inputs import MMItem
from mmcore.engine.kv_cache import KVCache, allocate_kv_caches
from mmcore.engine.kv_cache import kv_bytes_per_block as kv_bytes_per_block  # re-exported
from mmcore.engine.kv_groups import KVCacheGroups, single_group
from mmcore.engine.staging import HostStaging
from mmcore.layers.attention import AttentionMetadata
from mmcore.models.interfaces import supports_bidirectional_mm_spans, supports_encoder_decoder
from mmcore.sampling.host_masks import HostMasks
from mmcore.sampling.prompt_logprobs import PromptLogprobsChunk, compute_prompt_logprobs
from mmcore.sampling.request_state import (
    DeviceCounts,
    RequestSampling,
    build_request_sampling,
)
from mmcore.sampling.sampler import PendingSample, SampledBatch, sample_on_device

logger = logging.getLogger(__name__)


@dataclass
class RequestState:
    """What the runner keeps of one running request.

    Attributes:
        items: its multimodal items.
        sampling: its sampling inputs (see :mod:`mmcore.sampling.request_state`).
        prompt_token_ids: its prompt, kept when it asks for prompt log-probabilities.
    """

    items: list[MMItem]
    sampling: RequestSampling
    prompt_token_ids: np.ndarray | None = None


@dataclass
class LaunchedStep:
    """A step whose forward is enqueued and whose sampling is not yet.

    Attributes:
        logits: ``[rows, vocab]`` logits of the sampling rows (on the device).
        req_ids: the request of each row (the step's ``sampling_req_ids``).
        rows: each row's sampling inputs, captured at launch (a request removed before the
            sampling is enqueued keeps its row).
        prompt_logprobs: prompt log-probabilities computed by the forward, if any.
        ran: whether a forward was enqueued at all (an empty step keeps the previous step's
            tokens as the reference of the next step's -1 input ids).
    """

    logits: torch.Tensor | None
    req_ids: list[int]
    rows: list[RequestSampling]
    prompt_logprobs: PromptLogprobsChunk | None = None
    ran: bool = True


class ModelRunner:
    """Owns the model, its paged KV cache and the encoder output cache.

    Args:
        model: an mmcore model (see python/mmcore/models).
        num_blocks: KV cache blocks per layer.
        block_size: tokens per block.
        kv_dtype: dtype of the KV cache (``torch.float8_e4m3fn``: FP8 with per-head scales).
        kv_scales: FP8 only: per-layer (k_scale, v_scale) ``[Hkv]`` (ones when omitted).
        kv_groups: the KV cache groups (:mod:`mmcore.engine.kv_groups`; None: one group).
        cuda_graph_max_seqs: on CUDA, capture decode steps of up to this many requests as CUDA
            graphs (0: always eager).
        max_model_len: longest sequence (block-table width and attention bound of the graphs).
    """

    def __init__(
        self,
        model,
        *,
        num_blocks: int,
        block_size: int,
        kv_dtype: torch.dtype,
        kv_scales: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        kv_groups: KVCacheGroups | None = None,
        cuda_graph_max_seqs: int = 0,
        max_model_len: int = 0,
    ) -> None:
        self.model = model
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.kv_groups = kv_groups or single_group(model.num_layers)
        self.kv_caches: list[KVCache] = allocate_kv_caches(
            model, num_blocks, block_size, kv_dtype, self.device, kv_scales, groups=self.kv_groups
        )
        self.encoder_cache: dict[int, torch.Tensor] = {}
        self.requests: dict[int, RequestState] = {}
        # Per-request token counts for penalties and min_tokens, on the device.
        self.sampling_counts = DeviceCounts(model.vocab_size, self.device)
        # Requests asking for prompt log-probabilities: id -> (prompt token ids, top-k).
        self.prompt_logprob_requests: dict[int, tuple[np.ndarray, int]] = {}
        self.num_encoder_runs = 0
        self.staging = HostStaging(self.device)
        self.decode_graphs: DecodeGraphs | None = None
        # Encoder-decoder steps carry cross-attention inputs the decode graphs do not capture.
        if (
            self.device.type == "cuda"
            and cuda_graph_max_seqs > 0
            and not supports_encoder_decoder(model)
            and self._graphs_capturable()
        ):
            self.decode_graphs = DecodeGraphs(
                model,
                self.kv_caches,
                max_num_seqs=cuda_graph_max_seqs,
                max_blocks_per_seq=-(-max_model_len // block_size),
                max_seq_len=max_model_len,
                staging=self.staging,
                kv_groups=self.kv_groups,
                # Tensor parallel: rank 0 gathers the logits outside the graph.
                logits_in_graph=tp_size() == 1,
            )
            try:
                self.decode_graphs.capture()
            except RuntimeError as exc:
                # HF modeling code (Transformers backend) may not be capturable: run eagerly.
                if not getattr(model, "eager_if_capture_fails", False):
                    raise
                logging.getLogger("mmcore.engine").warning(
                    "CUDA graph capture failed, decode steps run eagerly: %s", exc
                )
                self.decode_graphs = None
        self.use_decode_graphs = self.decode_graphs is not None
        self.bidirectional_spans = supports_bidirectional_mm_spans(model)
        self.num_graph_steps = 0
        # Tokens sampled by the last launched step, on the device: overlapped scheduling fills
        # the next step's unknown (-1) input ids from them.
        self._last_sampled: torch.Tensor | None = None
        self.num_overlapped_steps = 0  # steps whose input ids came from device-side samples

    def _graphs_capturable(self) -> bool:
        """Decode graphs need the CUDA attention kernel: the torch reference it falls back to
        for other dtypes / head dims (e.g. float32) reads sequence lengths on the host."""
        from mmcore.kernels.ops import attention_kernel_supports

        key_cache = self.kv_caches[0][0]
        query = key_cache.new_empty((1, key_cache.shape[2], key_cache.shape[3]), dtype=self.dtype)
        if attention_kernel_supports(query, key_cache):
            return True
        logger.info(
            "CUDA graphs off: no attention kernel for %s with head dim %d (eager steps)",
            key_cache.dtype,
            key_cache.shape[3],
        )
        return False

    def add_request(self, req_id: int, state: RequestState) -> None:
        self.requests[req_id] = state
        k = state.sampling.params.prompt_logprobs
        if k is not None and state.prompt_token_ids is not None:
            self.prompt_logprob_requests[req_id] = (state.prompt_token_ids, k)

    def new_sampling(
        self,
        params,
        generator: torch.Generator,
        prompt_token_ids: np.ndarray,
        bad_words_ids: list[list[int]],
        stop_ids: list[int],
    ) -> RequestSampling:
        """A request's sampling inputs, with a device count slot when it needs one."""
        return build_request_sampling(
            params, generator, self.sampling_counts, prompt_token_ids, bad_words_ids, stop_ids
        )

    def remove_request(self, req_id: int) -> None:
        state = self.requests.pop(req_id, None)
        self.prompt_logprob_requests.pop(req_id, None)
        if state is not None and state.sampling.slot >= 0:
            self.sampling_counts.free(state.sampling.slot)

    def _tensor(self, name: str, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return self.staging.to_device(name, array, dtype)

    def _upload(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Host tensors on the device in one staged copy per dtype through the pinned ring of
        encoder inputs (non-blocking: an overlapped step does not wait for the step running)."""
        return self.staging.tensors_to_device("encoder_inputs", tensors)

    def _run_encoder(self, out) -> None:
        """Encode the step's new items, batched across requests, into the encoder cache."""
        pending: dict[str, list[tuple[int, int, MMItem]]] = {}
        given: list[tuple[int, torch.Tensor]] = []  # (handle, embeddings the user passed)
        for req_id, item_index, handle in zip(
            out.encoder_req_ids.tolist(),
            out.encoder_item_indices.tolist(),
            out.encoder_handles.tolist(),
        ):
            if handle in self.encoder_cache:
                continue
            item = self.requests[req_id].items[item_index]
            if item.embeds is not None:
                given.append((handle, item.embeds))
            else:
                pending.setdefault(item.modality, []).append((req_id, handle, item))
        for (handle, _), embeds in zip(given, self._upload([e for _, e in given])):
            self.encoder_cache[handle] = embeds.to(self.dtype)
        for modality, entries in pending.items():
            items = [item for _, _, item in entries]
            try:
                if encoder_tp_disabled():
                    outputs = self._encode_data_parallel(modality, items)
                else:
                    outputs = self._encode(modality, items)
            except Exception as exc:
                # Several ranks: probing items alone would split the ranks' collectives.
                if is_out_of_memory(exc) or tp_size() > 1:
                    raise
                bad = find_faulty(entries, lambda e, m=modality: self._encode(m, [e[2]]))
                if not bad:
                    raise
                raise RequestFault([req_id for req_id, _, _ in bad], exc) from exc
            self.num_encoder_runs += 1
            for (req_id, handle, item), emb in zip(entries, outputs):
                if emb.shape[0] != item.num_embeds:
                    raise RequestFault(
                        [req_id],
                        RuntimeError(
                            f"encoder gave {emb.shape[0]} embeddings for an item expected to "
                            f"have {item.num_embeds}"
                        ),
                    )
                self.encoder_cache[handle] = emb

    def _encode(self, modality: str, items: list[MMItem]) -> list[torch.Tensor]:
        # Every item's tensors in one staged copy per dtype.
        keys = [(n, k) for n, it in enumerate(items) for k, v in it.data.items()
                if isinstance(v, torch.Tensor)]  # fmt: skip
        uploaded = self._upload([items[n].data[k] for n, k in keys])
        data = [dict(it.data) for it in items]
        for (n, k), tensor in zip(keys, uploaded):
            data[n][k] = tensor
        return self.model.encode(modality, data) if data else []

    def _encode_data_parallel(self, modality: str, items: list[MMItem]) -> list[torch.Tensor]:
        """``mm_encoder_tp_mode="data"``: each rank encodes a contiguous share of the items
        (balanced by embedding count) with its whole encoder, then one all-gather."""
        sizes = [item.num_embeds for item in items]
        bounds = _balanced_split(sizes, tp_size())
        first, last = bounds[tp_rank()], bounds[tp_rank() + 1]
        mine = self._encode(modality, items[first:last])
        local = (
            torch.cat(mine).to(self.dtype)
            if mine
            else torch.empty(0, self.model.hidden_size, dtype=self.dtype, device=self.device)
        )
        rows = [sum(sizes[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return list(all_gather_varlen(local, rows).split(sizes))

    def encode_missing(self, out, req_ids: set[int]) -> None:
        """Encode, one item at a time, the items of ``req_ids`` that step ``out`` scheduled but
        did not encode (it failed): the core counts them as cached from now on.

        Raises:
            RequestFault: naming the requests whose item fails to encode on its own.
        """
        bad = []
        for req_id, item_index, handle in zip(
            out.encoder_req_ids.tolist(),
            out.encoder_item_indices.tolist(),
            out.encoder_handles.tolist(),
        ):
            if req_id not in req_ids or handle in self.encoder_cache:
                continue
            item = self.requests[req_id].items[item_index]
            try:
                if item.embeds is not None:
                    self.encoder_cache[handle] = self._upload([item.embeds])[0].to(self.dtype)
                else:
                    self.encoder_cache[handle] = self._encode(item.modality, [item])[0]
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                bad.append((req_id, exc))
        if bad:
            raise RequestFault([r for r, _ in bad], bad[0][1])

    def _input_ids(self, out) -> torch.Tensor:
        """The step's input ids on the device, with each -1 (a token the previous step sampled,
        not yet on the host) gathered from that step's device tokens: no host sync."""
        input_ids = self._tensor("input_ids", out.input_ids, torch.long)
        pending_rows = np.flatnonzero(out.input_ids < 0)
        if len(pending_rows) == 0:
            return input_ids
        if self._last_sampled is None:
            raise RuntimeError("the step has unknown input ids but no previous step was launched")
        if tp_size() > 1:  # only rank 0 sampled: every rank needs the tokens
            broadcast_from_first(self._last_sampled)
        owners = np.searchsorted(out.query_start_loc, pending_rows, side="right") - 1
        sources = out.prev_sample_index[owners]
        if np.any(sources < 0) or np.any(sources >= len(self._last_sampled)):
            raise RuntimeError(f"prev_sample_index {sources.tolist()} is out of range")
        self.num_overlapped_steps += 1
        rows = self._tensor("pending_rows", pending_rows, torch.long)
        input_ids[rows] = self._last_sampled[self._tensor("prev_sample_index", sources, torch.long)]
        return input_ids

    def _input_embeds(self, out, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.model.embed_tokens(input_ids)
        for handle, src, dst, length in zip(
            out.scatter_handles.tolist(),
            out.scatter_src_offsets.tolist(),
            out.scatter_dst_rows.tolist(),
            out.scatter_lens.tolist(),
        ):
            cached = self.encoder_cache.get(handle)
            if cached is None:  # an item whose encoding failed in an earlier step
                row = int(np.searchsorted(out.query_start_loc, dst, side="right")) - 1
                raise RequestFault(
                    [int(out.req_ids[row])], RuntimeError("the item's encoder output is missing")
                )
            embeds[dst : dst + length] = cached[src : src + length]
        return embeds

    def _attention_metadata(self, out) -> AttentionMetadata:
        """The step's paged-attention arrays on the device; the bounds come from the host."""
        starts = out.query_start_loc
        query_lens = np.diff(starts)
        attn = AttentionMetadata(
            slot_mapping=self._tensor("slot_mapping", out.slot_mapping, torch.long),
            block_tables=self._tensor("block_tables", out.block_tables, torch.int32),
            seq_lens=self._tensor("seq_lens", out.seq_lens, torch.int32),
            query_start_loc=self._tensor("query_start_loc", starts, torch.int32),
            max_seq_len=int(out.seq_lens.max()),
            max_query_len=int(query_lens.max()),
            min_query_len=int(query_lens.min()),
            attend_until=self._attend_until(out),
            cross=build_cross_metadata(out, self.encoder_cache, self._tensor),
        )
        if getattr(out, "num_kv_groups", 1) > 1:
            attn.groups = [attn, *self._group_metadata(out, attn)]
            attn.layer_group = self.kv_groups.layer_group
        return attn

    def _group_metadata(self, out, attn: AttentionMetadata) -> list[AttentionMetadata]:
        """KV cache groups 1.. of a hybrid step: their own slots and block tables."""
        extra = out.num_kv_groups - 1
        tables = self._tensor("group_block_tables", out.group_block_tables, torch.int32)
        tables = tables.view(out.num_reqs, extra, -1)  # request-major rows
        slots = self._tensor("group_slot_mapping", out.group_slot_mapping, torch.long)
        return [
            dataclasses.replace(attn, slot_mapping=slots[g], block_tables=tables[:, g])
            for g in range(extra)
        ]

    def _attend_until(self, out) -> torch.Tensor | None:
        """For models with bidirectional item spans: each embedding row may see up to the last
        row of its scatter run (the scheduler keeps an item's rows in one step), others their
        own position. None when the step scatters nothing (plain causal)."""
        if not self.bidirectional_spans or len(out.scatter_lens) == 0:
            return None
        positions = np.asarray(out.positions)
        until = np.array(positions if positions.ndim == 1 else positions[0], dtype=np.int32)
        for dst, length in zip(out.scatter_dst_rows.tolist(), out.scatter_lens.tolist()):
            until[dst : dst + length] = until[dst + length - 1]
        return self._tensor("attend_until", until, torch.int32)

    def execute(self, out) -> SampledBatch:
        """Run one step and wait for it; return the tokens sampled for ``out.sampling_req_ids``."""
        return self.launch(out).resolve()

    def launch(self, out, host_masks: HostMasks | None = None) -> PendingSample:
        """Enqueue one step (forward and sampling) on the device without waiting for it.

        Args:
            out: the step.
            host_masks: constraints of its sampling rows computed by the driver (several
                ranks: grammar bitmasks and bad-word bans travel with the step).

        Returns:
            The tokens sampled for ``out.sampling_req_ids``, still on the device; the next
            launched step reads them for its -1 input ids (``out.prev_sample_index``).
        """
        return self.sample(self.forward(out), host_masks)

    @torch.inference_mode()
    def forward(self, out) -> LaunchedStep:
        """Enqueue one step's encoder and LM forward; the logits stay on the device.

        The sampling rows' inputs are captured now; :meth:`sample` enqueues the sampling.
        """
        for handle in out.freed_encoder_handles.tolist():
            self.encoder_cache.pop(handle, None)
        for req_id in out.finished_req_ids.tolist():
            self.remove_request(req_id)
        req_ids = out.sampling_req_ids.tolist()
        rows = [self.requests[r].sampling for r in req_ids]
        if out.num_tokens == 0:  # nothing launched: the last step's tokens stay the reference
            return LaunchedStep(None, [], [], ran=False)
        input_ids = self._input_ids(out)
        if self.use_decode_graphs and self.decode_graphs.can_run(out):
            self.num_graph_steps += 1
            result = self.decode_graphs.run(out, input_ids)
            if not self.decode_graphs.logits_in_graph:  # tensor parallel: gathered to rank 0
                result = self.model.compute_logits(result)
            return LaunchedStep(result, req_ids, rows)
        self._run_encoder(out)
        embeds = self._input_embeds(out, input_ids)
        attn = self._attention_metadata(out)
        positions = self._tensor("positions", out.positions, torch.long)
        hidden = self.model.forward(embeds, positions, self.kv_caches, attn)
        prompt_logprobs = compute_prompt_logprobs(
            self.model, hidden, out, self.prompt_logprob_requests, self._tensor
        )
        if len(out.logits_indices) == 0:
            return LaunchedStep(None, [], [], prompt_logprobs)
        index = self._tensor("logits_indices", out.logits_indices, torch.long)
        return LaunchedStep(
            self.model.compute_logits(hidden[index]), req_ids, rows, prompt_logprobs
        )

    @torch.inference_mode()
    def sample(self, step: LaunchedStep, host_masks: HostMasks | None = None) -> PendingSample:
        """Enqueue the sampling of a launched step (after its host masks, if any, are filled).

        Args:
            step: what :meth:`forward` returned.
            host_masks: grammar bitmask and bans computed on the host for this step.

        Returns:
            The pending tokens (and log-probabilities).
        """
        if step.logits is None and step.rows:  # tensor parallel, not rank 0: rank 0 samples
            # The buffer receives rank 0's tokens when the next step reads them (broadcast).
            self._last_sampled = torch.empty(len(step.rows), dtype=torch.long, device=self.device)
            pending = PendingSample(self._last_sampled[:0], [])
        elif step.logits is None:
            pending = PendingSample(torch.empty(0, dtype=torch.long, device=self.device), [])
            if step.ran:
                self._last_sampled = pending.token_ids
        else:
            try:
                pending = sample_on_device(
                    step.logits,
                    step.rows,
                    counts=self.sampling_counts,
                    to_device=self._tensor,
                    host_masks=host_masks,
                )
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                raise self._sampling_fault(step, exc) from exc
            self._last_sampled = pending.token_ids
        if step.prompt_logprobs is not None:
            pending.attach_prompt_logprobs(step.prompt_logprobs)
        return pending

    def _sampling_fault(self, step: LaunchedStep, exc: Exception) -> Exception:
        """The requests whose rows fail to sample alone (each on a throw-away generator, no
        counts: their own state is left as it was), as a RequestFault; else ``exc`` (always
        with several ranks: a failing step there is a worker failure)."""
        if tp_size() > 1:
            return exc
        bad = find_faulty(
            range(len(step.rows)),
            lambda i: sample_on_device(
                step.logits[i : i + 1],
                [dataclasses.replace(step.rows[i], generator=_throwaway(self.device), slot=-1)],
            ).resolve(),
        )
        return RequestFault([step.req_ids[i] for i in bad], exc) if bad else exc


def _balanced_split(sizes: list[int], parts: int) -> list[int]:
    """Boundaries ``[0, ..., len(sizes)]`` of ``parts`` contiguous runs of about equal sum."""
    total, bounds, acc = sum(sizes), [0], 0
    for i, size in enumerate(sizes):
        acc += size
        while len(bounds) < parts and acc * parts >= total * len(bounds) and i + 1 > bounds[-1]:
            bounds.append(i + 1)
    bounds += [len(sizes)] * (parts + 1 - len(bounds))
    return bounds


def _throwaway(device: torch.device) -> torch.Generator:
    """A fresh seeded generator on ``device`` (probing a row must not advance its own)."""
    return torch.Generator(device=device).manual_seed(0)
