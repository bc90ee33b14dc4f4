"""What every executor does with the model, in-process or in a worker: load it (this rank's
shard), measure how many KV bytes fit, and build the runner over the resulting cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmcore.engine.kv_cache import kv_bytes_per_block, load_kv_scales, resolve_kv_cache_dtype
from mmcore.engine.kv_groups import model_kv_groups
from mmcore.engine.profiling import gpu_kv_cache_bytes, profile_peak_activation_bytes
from mmcore.engine.runner import ModelRunner
from mmcore.model_loader import load_model, safetensors_files

CPU_KV_CACHE_BYTES = 2 << 30


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model (picklable: workers receive it)."""

    model_path: str
    dtype: torch.dtype
    load_format: str
    seed: int  # of dummy weights
    mm_processor_kwargs: dict | None
    model_impl: str = "auto"  # every rank loads the same implementation
    quantization: str | None = None  # EngineArgs.quantization
    quantize_vision: bool = False
    kv_cache_dtype: str = "auto"  # EngineArgs.kv_cache_dtype ("fp8": e4m3 with per-head scales)
    # False: disable_hybrid_kv_cache_manager (one KV group even for sliding-window layers).
    hybrid_kv_cache: bool = True


@dataclass(frozen=True)
class KVSizing:
    """What the KV cache must leave room for (GPU profiling) or its fixed size."""

    block_size: int
    kv_cache_memory_bytes: int | None
    gpu_memory_utilization: float
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    encoder_budget: int
    limit_mm_per_prompt: dict[str, int] | None = None  # sizes the profiled dummy items
    cross_len: int = 0  # encoder positions whose cross-attention K/V each request holds


@dataclass(frozen=True)
class RunnerSpec:
    """The runner's cache and graph settings, decided once the KV capacity is known."""

    num_blocks: int
    block_size: int
    cuda_graph_max_seqs: int
    max_model_len: int


def load_model_shard(spec: ModelSpec, device: torch.device):
    """This rank's model (the whole model on one rank)."""
    model, _ = load_model(
        spec.model_path,
        dtype=spec.dtype,
        device=device,
        load_format=spec.load_format,
        seed=spec.seed,
        model_impl=spec.model_impl,
        quantization=spec.quantization,
        quantize_vision=spec.quantize_vision,
    )
    return model


def _processor(spec: ModelSpec, model):
    from transformers import AutoConfig, AutoTokenizer

    from mmcore.models.transformers_backend.loader import processor_class

    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    hf_config = AutoConfig.from_pretrained(spec.model_path)
    processor_cls = processor_class(hf_config.model_type, spec.model_impl, spec.model_path)
    return processor_cls(spec.model_path, hf_config, tokenizer, spec.mm_processor_kwargs)


def measure_kv_capacity(
    model, spec: ModelSpec, sizing: KVSizing
) -> tuple[int, int, tuple[int, ...]]:
    """(bytes of one KV block id on this rank, KV bytes this rank can hold, the KV cache
    groups' windows: :mod:`mmcore.engine.kv_groups`).

    On CUDA without ``kv_cache_memory_bytes``: what is left of ``gpu_memory_utilization`` after the
    weights and a profiled worst-case step.
    """
    first = next(model.parameters())
    kv_dtype = kv_cache_dtype(model, spec)
    groups = model_kv_groups(model, spec.hybrid_kv_cache)
    block_bytes = kv_bytes_per_block(model, sizing.block_size, kv_dtype, groups.num_slots)
    if sizing.kv_cache_memory_bytes is not None:
        return block_bytes, int(sizing.kv_cache_memory_bytes), groups.windows
    if first.device.type != "cuda":
        return block_bytes, CPU_KV_CACHE_BYTES, groups.windows
    peak = profile_peak_activation_bytes(
        model,
        _processor(spec, model),
        num_tokens=sizing.max_num_batched_tokens,
        max_num_seqs=sizing.max_num_seqs,
        max_model_len=sizing.max_model_len,
        block_size=sizing.block_size,
        encoder_budget=sizing.encoder_budget,
        kv_dtype=kv_dtype,
        limit_mm_per_prompt=sizing.limit_mm_per_prompt,
    )
    kv_bytes = gpu_kv_cache_bytes(first.device, sizing.gpu_memory_utilization, peak)
    return block_bytes, kv_bytes, groups.windows


def num_blocks_from_capacity(capacities: list[tuple], sizing: KVSizing) -> int:
    """KV blocks every rank can hold (the smallest rank decides), capped at what the longest
    batch can use.

    Raises:
        ValueError: when not even one block fits.
    """
    num_blocks = min(c[1] // c[0] for c in capacities)
    num_groups = len(capacities[0][2]) if len(capacities[0]) > 2 else 1
    per_seq = num_groups * -(-sizing.max_model_len // sizing.block_size) + -(
        -sizing.cross_len // sizing.block_size
    )
    cap = sizing.max_num_seqs * per_seq + 1
    num_blocks = min(num_blocks, cap)
    if num_blocks < 1:
        block_bytes, kv_bytes = min(capacities, key=lambda c: c[1] // c[0])[:2]
        raise ValueError(
            f"kv_cache_memory_bytes={kv_bytes} holds no KV block of {block_bytes} bytes"
        )
    return num_blocks


def kv_cache_dtype(model, spec: ModelSpec) -> torch.dtype:
    """The KV cache's dtype: the model's, or e4m3 for ``kv_cache_dtype="fp8"`` (whose blocks
    take half a bf16 block's bytes, so the same memory holds twice the blocks)."""
    return resolve_kv_cache_dtype(spec.kv_cache_dtype, next(model.parameters()).dtype)


def build_runner(model, spec: RunnerSpec, model_spec: ModelSpec) -> ModelRunner:
    """The runner over a KV cache of ``spec.num_blocks`` blocks (FP8: with the checkpoint's
    per-layer K/V scales of this rank's KV heads, ones where it has none)."""
    kv_dtype = kv_cache_dtype(model, model_spec)
    kv_scales = None
    if kv_dtype != next(model.parameters()).dtype:
        files = (
            [] if model_spec.load_format == "dummy" else safetensors_files(model_spec.model_path)
        )
        kv_scales = load_kv_scales(files, model.num_layers, model.num_kv_heads)
    return ModelRunner(
        model,
        num_blocks=spec.num_blocks,
        block_size=spec.block_size,
        kv_dtype=kv_dtype,
        kv_scales=kv_scales,
        kv_groups=model_kv_groups(model, model_spec.hybrid_kv_cache),
        cuda_graph_max_seqs=spec.cuda_graph_max_seqs,
        max_model_len=spec.max_model_len,
    )


def runner_counters(runner) -> dict[str, int]:
    """The runner's counters the engine reports in ``stats()`` (``peer_all_reduce``: 1 when
    tensor-parallel activations are reduced by the one-shot peer-to-peer all-reduce)."""
    from mmcore.distributed.parallel_state import tp_state

    return {
        "encoder_runs": runner.num_encoder_runs,
        "cuda_graph_steps": runner.num_graph_steps,
        "overlapped_steps": runner.num_overlapped_steps,
        "peer_all_reduce": int(tp_state().peer_all_reduce is not None),
    }
