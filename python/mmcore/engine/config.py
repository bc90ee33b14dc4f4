"""Resolves Engine arguments against a checkpoint: dtype, device, lengths, KV cache size."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from mmcore import _core
from mmcore.engine.cpu_placement import apply_offline_cpu_threads
from mmcore.engine.generation_defaults import sampling_defaults
from mmcore.engine.kv_cache import resolve_kv_cache_dtype
from mmcore.engine_args import EngineArgs
from mmcore.executor.base import ParallelConfig, check_shardable, create_executor
from mmcore.executor.model_setup import KVSizing, ModelSpec
from mmcore.hub import check_remote_code, resolve_model_path
from mmcore.model_loader import check_quantization, describe_quantization
from mmcore.models.interfaces import supports_encoder_decoder
from mmcore.models.transformers_backend.checks import check_supported
from mmcore.models.transformers_backend.loader import processor_class, use_transformers_backend
from mmcore.multimodal.processor_cache import ProcessorCache

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EngineConfig:
    """Everything the Engine needs, resolved."""

    args: EngineArgs
    model_path: str
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    block_size: int
    num_blocks: int
    kv_block_bytes: int
    vocab_size: int
    kv_dtype: torch.dtype
    max_num_seqs: int
    enforce_eager: bool
    async_scheduling: bool
    seed: int
    limit_mm_per_prompt: dict[str, int] | None
    mm_processor_kwargs: dict | None
    allowed_local_media_path: str | None
    allowed_media_domains: list[str]
    chat_template: str | None
    served_model_names: list[str]
    sampling_defaults: dict[str, Any]
    eos_token_ids: list[int]
    scheduler_config: Any
    tokenizer: Any
    model: Any  # the model when it runs in this process (executor "uni"), else None
    executor: Any
    parallel: ParallelConfig
    processor: Any
    processor_cache: ProcessorCache
    quantization: str | None = None  # the FP8 plan for logs, e.g. "fp8 (quantised on load)"


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available")
    return dev


def _resolve_dtype(dtype: str, hf_config, device: torch.device) -> torch.dtype:
    """EngineArgs' canonical dtype name -> torch dtype; ``auto`` picks by device and checkpoint."""
    if dtype != "auto":
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
        with open(gen_path) as f:
            sources.append(json.load(f).get("eos_token_id"))
    sources.append(tokenizer.eos_token_id)
    for src in sources:
        if src is None:
            continue
        ids.update(src if isinstance(src, list) else [src])
    return sorted(ids)


def _read_chat_template(model_path: str, tokenizer, override: str | None) -> str | None:
    """The chat template: ``override`` (a file or the template itself), else the checkpoint's."""
    if override is not None:
        if os.path.isfile(override):
            with open(override) as f:
                return f.read()
        if "{{" in override or "{%" in override:
            return override
        raise ValueError(f"chat_template {override!r} is neither a file nor a Jinja template")
    path = os.path.join(model_path, "chat_template.jinja")
    if os.path.exists(path):
        with open(path) as f:
            return f.read()
    return getattr(tokenizer, "chat_template", None)


def _load_tokenizer(args: EngineArgs, model_path: str):
    path = model_path
    if args.tokenizer is not None:
        path = resolve_model_path(
            args.tokenizer,
            revision=args.tokenizer_revision,
            download_dir=args.download_dir,
            with_weights=False,
        )
    return AutoTokenizer.from_pretrained(path)


def _check_limits(limits: dict[str, int] | None, supported: tuple[str, ...]) -> None:
    """A limit for a modality the model does not take is a typo or a wrong model, not a no-op
    (a limit of 0 is allowed: it only says "none")."""
    for modality, count in (limits or {}).items():
        if count > 0 and modality not in supported:
            raise ValueError(
                f"limit_mm_per_prompt names {modality!r}, which this model does not accept "
                f"(it accepts: {', '.join(supported) or 'text only'})"
            )


def _bidirectional_spans(model_type: str, model_impl: str) -> bool:
    """Whether the model class attends both ways inside items (see ``interfaces.py``)."""
    from mmcore.models.interfaces import supports_bidirectional_mm_spans
    from mmcore.multimodal.registry import get_model_class

    if use_transformers_backend(model_type, model_impl):
        return False
    return supports_bidirectional_mm_spans(get_model_class(model_type))


def _vocab_size(executor, text_config) -> int:
    """Rows of the logits: the in-process model's, else the checkpoint's text config's."""
    model = getattr(executor, "model", None)
    return int(getattr(model, "vocab_size", 0) or text_config.vocab_size)


def resolve_config(args: EngineArgs) -> EngineConfig:
    """Find the checkpoint, load its config, tokenizer, processor and model; size the KV cache.

    Raises:
        ValueError: the model cannot be found or run, or the options do not fit it.
    """
    model = resolve_model_path(
        args.model,
        revision=args.revision,
        download_dir=args.download_dir,
        with_weights=args.load_format != "dummy",
    )
    check_remote_code(model, args.trust_remote_code)
    device = _resolve_device(args.device)
    if device.type == "cpu":
        apply_offline_cpu_threads()  # before the model's first op starts the OpenMP team
    hf_config = AutoConfig.from_pretrained(model)
    dtype = _resolve_dtype(args.dtype, hf_config, device)
    # Refuse an unsupported quantisation here, before any worker starts.
    quant = check_quantization(
        hf_config, args.quantization, args.quantize_vision, args.model_impl, device
    )
    torch.manual_seed(args.seed)

    parallel = ParallelConfig(
        tensor_parallel_size=args.tensor_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        mm_encoder_tp_mode=args.mm_encoder_tp_mode,
        disable_custom_all_reduce=args.disable_custom_all_reduce,
    )
    parallel.validate()
    check_shardable(hf_config, parallel, model_impl=args.model_impl)
    if use_transformers_backend(hf_config.model_type, args.model_impl):
        check_supported(hf_config)  # the model's own refusals come before its processor's

    tokenizer = _load_tokenizer(args, model)
    processor = processor_class(hf_config.model_type, args.model_impl, model)(
        model, hf_config, tokenizer, args.mm_processor_kwargs
    )

    _check_limits(args.limit_mm_per_prompt, processor.supported_modalities)

    text_config = getattr(hf_config, "text_config", hf_config)
    model_max = int(
        getattr(text_config, "max_position_embeddings", None)
        or getattr(text_config, "max_target_positions", None)  # Whisper's decoder
        or 4096
    )
    max_model_len = args.max_model_len or model_max
    if max_model_len > model_max:
        raise ValueError(f"max_model_len={max_model_len} exceeds the model's {model_max} positions")
    chunked = args.enable_chunked_prefill
    max_batched = args.max_num_batched_tokens
    if max_batched is None:
        max_batched = 8192 if chunked else max(8192, max_model_len)
    if not chunked and max_batched < max_model_len:
        raise ValueError(
            "max_num_batched_tokens must be >= max_model_len when chunked prefill is disabled"
        )
    block_size = args.block_size
    max_num_seqs = args.max_num_seqs

    largest_item = max(
        (
            processor.num_embeds(m, item)
            for m in processor.supported_modalities
            for item in processor.dummy_items(m, 1, max_model_len)
            if (args.limit_mm_per_prompt or {}).get(m, 1) > 0
        ),
        default=0,
    )
    encoder_budget = max(max_batched, largest_item)

    sizing = KVSizing(
        block_size=block_size,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        gpu_memory_utilization=float(args.gpu_memory_utilization),
        max_num_batched_tokens=int(max_batched),
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        encoder_budget=encoder_budget,
        limit_mm_per_prompt=args.limit_mm_per_prompt,
        # An encoder-decoder model's requests also hold their cross-attention K/V blocks.
        cross_len=(
            int(getattr(hf_config, "max_source_positions", 0))
            if supports_encoder_decoder(processor)
            else 0
        ),
    )
    spec = ModelSpec(
        model_path=os.path.abspath(model),
        dtype=dtype,
        load_format=args.load_format,
        seed=args.seed,
        mm_processor_kwargs=args.mm_processor_kwargs,
        model_impl=args.model_impl,
        quantization=args.quantization,
        quantize_vision=args.quantize_vision,
        kv_cache_dtype=args.kv_cache_dtype,
        hybrid_kv_cache=not args.disable_hybrid_kv_cache_manager,
    )
    executor = create_executor(
        parallel,
        spec,
        sizing,
        device=device,
        cuda_graph_max_seqs=0 if args.enforce_eager else max_num_seqs,
    )
    num_blocks = executor.num_blocks

    sc = _core.SchedulerConfig()
    sc.num_blocks = num_blocks
    sc.block_size = block_size
    sc.max_num_batched_tokens = max_batched
    sc.max_num_seqs = max_num_seqs
    sc.max_model_len = max_model_len
    sc.enable_prefix_caching = args.enable_prefix_caching
    sc.enable_chunked_prefill = chunked
    sc.encoder_budget = encoder_budget
    # Items attended both ways must be computed whole in one step (chunking and recompute).
    sc.chunk_inside_mm_items = not _bidirectional_spans(hf_config.model_type, args.model_impl)
    sc.encoder_cache_size = encoder_budget
    windows = list(getattr(executor, "kv_group_windows", (-1,)))
    sc.kv_group_windows = windows if len(windows) > 1 else []

    return EngineConfig(
        args=args,
        model_path=os.path.abspath(model),
        device=device,
        dtype=dtype,
        max_model_len=max_model_len,
        block_size=block_size,
        num_blocks=num_blocks,
        kv_block_bytes=executor.kv_block_bytes,
        vocab_size=_vocab_size(executor, text_config),
        kv_dtype=resolve_kv_cache_dtype(args.kv_cache_dtype, dtype),
        max_num_seqs=max_num_seqs,
        enforce_eager=args.enforce_eager,
        async_scheduling=(
            device.type == "cuda" if args.async_scheduling is None else args.async_scheduling
        ),
        seed=args.seed,
        limit_mm_per_prompt=args.limit_mm_per_prompt,
        mm_processor_kwargs=args.mm_processor_kwargs,
        allowed_local_media_path=args.allowed_local_media_path,
        allowed_media_domains=list(args.allowed_media_domains or []),
        chat_template=_read_chat_template(model, tokenizer, args.chat_template),
        served_model_names=list(args.served_model_name or [args.model or model]),
        sampling_defaults=sampling_defaults(args.generation_config, model),
        eos_token_ids=_eos_ids(hf_config, tokenizer, model),
        scheduler_config=sc,
        tokenizer=tokenizer,
        model=getattr(executor, "model", None),
        executor=executor,
        parallel=parallel,
        processor=processor,
        processor_cache=ProcessorCache(int(args.mm_processor_cache_gb * (1 << 30))),
        quantization=describe_quantization(quant, args.load_format),
    )
