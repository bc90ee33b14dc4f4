"""Resolves Engine arguments against a checkpoint: dtype, device, lengths, KV cache size."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from mmcore import _core
from mmcore.executor.base import ParallelConfig, check_shardable, create_executor
from mmcore.executor.model_setup import KVSizing, ModelSpec
from mmcore.model_loader import LOAD_FORMATS
from mmcore.multimodal.processor_cache import ProcessorCache
from mmcore.multimodal.registry import get_processor_class

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ENGINE_ARGS = {
    "dtype",
    "device",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "block_size",
    "kv_cache_memory",
    "enable_prefix_caching",
    "enable_chunked_prefill",
    "limit_mm_per_prompt",
    "mm_processor_kwargs",
    "seed",
    "load_format",
    "allowed_local_media_path",
    "gpu_memory_utilization",
    "processor_cache_bytes",
    "enforce_eager",
    "async_scheduling",
    "tensor_parallel_size",
    "distributed_executor_backend",
    "mm_encoder_tp_mode",
}


@dataclass
class EngineConfig:
    """Everything the Engine needs, resolved."""

    model_path: str
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    block_size: int
    num_blocks: int
    max_num_seqs: int
    enforce_eager: bool
    async_scheduling: bool
    seed: int
    limit_mm_per_prompt: dict[str, int] | None
    mm_processor_kwargs: dict | None
    allowed_local_media_path: str | None
    chat_template: str | None
    eos_token_ids: list[int]
    scheduler_config: Any
    tokenizer: Any
    model: Any  # the model when it runs in this process (executor "uni"), else None
    executor: Any
    parallel: ParallelConfig
    processor: Any
    processor_cache: ProcessorCache


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available")
    return dev


def _resolve_dtype(dtype: str | torch.dtype, hf_config, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    text = getattr(hf_config, "text_config", hf_config)
    configured = getattr(text, "dtype", None) or getattr(hf_config, "dtype", None)
    configured = _DTYPES.get(str(configured).replace("torch.", ""), torch.float32)
    return torch.bfloat16 if configured == torch.float32 else configured


def _eos_ids(hf_config, tokenizer, model_path: str) -> list[int]:
    ids: set[int] = set()
    gen_path = os.path.join(model_path, "generation_config.json")
    sources = [getattr(hf_config, "eos_token_id", None)]
    text = getattr(hf_config, "text_config", None)
    if text is not None:
        sources.append(getattr(text, "eos_token_id", None))
    if os.path.exists(gen_path):
        import json

        with open(gen_path) as f:
            sources.append(json.load(f).get("eos_token_id"))
    sources.append(tokenizer.eos_token_id)
    for src in sources:
        if src is None:
            continue
        ids.update(src if isinstance(src, list) else [src])
    return sorted(ids)


def _read_chat_template(model_path: str, tokenizer) -> str | None:
    path = os.path.join(model_path, "chat_template.jinja")
    if os.path.exists(path):
        with open(path) as f:
            return f.read()
    return getattr(tokenizer, "chat_template", None)


def resolve_config(model: str, **kwargs: Any) -> EngineConfig:
    """Load the checkpoint's config, tokenizer, processor and model; size the KV cache."""
    unknown = set(kwargs) - _ENGINE_ARGS
    if unknown:
        raise TypeError(f"Engine got unknown arguments: {sorted(unknown)}")
    if not os.path.isdir(model):
        raise ValueError(f"model must be a local checkpoint folder; {model!r} is not a directory")
    get = kwargs.get
    device = _resolve_device(get("device", "auto"))
    hf_config = AutoConfig.from_pretrained(model)
    dtype = _resolve_dtype(get("dtype", "auto"), hf_config, device)
    seed = int(get("seed", 0))
    torch.manual_seed(seed)

    parallel = ParallelConfig(
        tensor_parallel_size=get("tensor_parallel_size", 1),
        distributed_executor_backend=get("distributed_executor_backend"),
        mm_encoder_tp_mode=get("mm_encoder_tp_mode", "weights"),
    )
    parallel.validate()
    check_shardable(hf_config, parallel)
    load_format = get("load_format", "auto")
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; choose one of {LOAD_FORMATS}")
    tokenizer = AutoTokenizer.from_pretrained(model)
    processor = get_processor_class(hf_config.model_type)(
        model, hf_config, tokenizer, get("mm_processor_kwargs")
    )

    text_config = getattr(hf_config, "text_config", hf_config)
    model_max = int(getattr(text_config, "max_position_embeddings", 4096))
    max_model_len = int(get("max_model_len") or model_max)
    if max_model_len > model_max:
        raise ValueError(f"max_model_len={max_model_len} exceeds the model's {model_max} positions")
    chunked = bool(get("enable_chunked_prefill", True))
    max_batched = get("max_num_batched_tokens")
    if max_batched is None:
        max_batched = 8192 if chunked else max(8192, max_model_len)
    if not chunked and max_batched < max_model_len:
        raise ValueError(
            "max_num_batched_tokens must be >= max_model_len when chunked prefill is disabled"
        )
    block_size = int(get("block_size", 16))
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    max_num_seqs = int(get("max_num_seqs", 256))

    largest_item = max(
        (
            processor.num_embeds(m, item)
            for m in processor.supported_modalities
            for item in processor.dummy_items(m, 1)
        ),
        default=0,
    )
    encoder_budget = max(int(max_batched), largest_item)

    sizing = KVSizing(
        block_size=block_size,
        kv_cache_memory=get("kv_cache_memory"),
        gpu_memory_utilization=float(get("gpu_memory_utilization", 0.9)),
        max_num_batched_tokens=int(max_batched),
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        encoder_budget=encoder_budget,
    )
    spec = ModelSpec(
        model_path=os.path.abspath(model),
        dtype=dtype,
        load_format=load_format,
        seed=0,  # dummy weights are the same for every engine seed
        mm_processor_kwargs=get("mm_processor_kwargs"),
    )
    enforce_eager = bool(get("enforce_eager", False))
    executor = create_executor(
        parallel,
        spec,
        sizing,
        device=device,
        cuda_graph_max_seqs=0 if enforce_eager else max_num_seqs,
    )
    num_blocks = executor.num_blocks

    sc = _core.SchedulerConfig()
    sc.num_blocks = num_blocks
    sc.block_size = block_size
    sc.max_num_batched_tokens = int(max_batched)
    sc.max_num_seqs = max_num_seqs
    sc.max_model_len = max_model_len
    sc.enable_prefix_caching = bool(get("enable_prefix_caching", True))
    sc.enable_chunked_prefill = chunked
    sc.encoder_budget = encoder_budget
    sc.encoder_cache_size = encoder_budget

    return EngineConfig(
        model_path=os.path.abspath(model),
        device=device,
        dtype=dtype,
        max_model_len=max_model_len,
        block_size=block_size,
        num_blocks=num_blocks,
        max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager,
        async_scheduling=bool(
            device.type == "cuda" if get("async_scheduling") is None else get("async_scheduling")
        ),
        seed=seed,
        limit_mm_per_prompt=get("limit_mm_per_prompt"),
        mm_processor_kwargs=get("mm_processor_kwargs"),
        allowed_local_media_path=get("allowed_local_media_path"),
        chat_template=_read_chat_template(model, tokenizer),
        eos_token_ids=_eos_ids(hf_config, tokenizer, model),
        scheduler_config=sc,
        tokenizer=tokenizer,
        model=getattr(executor, "model", None),
        executor=executor,
        parallel=parallel,
        processor=processor,
        processor_cache=ProcessorCache(int(get("processor_cache_bytes", 1 << 30))),
    )
