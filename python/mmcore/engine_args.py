"""``EngineArgs``: every Engine option, once, with vLLM's names.

The same declaration builds the ``mmcore serve`` / ``generate`` / ``bench offline`` options
(``EngineArgs.add_cli_args``) and validates ``Engine(**kwargs)`` (``EngineArgs.from_kwargs``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from mmcore.arg_utils import (
    add_dataclass_args,
    check_fields,
    check_known,
    namespace_kwargs,
    option,
    parse_json_object,
)

DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
_DTYPE_ALIASES = {"half": "float16", "float": "float32"}
LOAD_FORMATS = ("auto", "safetensors", "dummy")
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")
MODEL_IMPLS = ("auto", "mmcore", "transformers")
EXECUTOR_BACKENDS = ("uni", "mp", "ray")
MM_ENCODER_TP_MODES = ("weights", "data")
QUANTIZATION_METHODS = ("fp8", "compressed-tensors")  # mmcore.quantization checks the checkpoint
# Values that run today; the others get a clear error (multi-GPU lands with tensor parallelism).


def parse_path(value: Any) -> str | None:
    """A folder, file or hub id: a string or an ``os.PathLike`` (``pathlib.Path``), as a string."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(f"expected a path or hub id string, got {value!r}")


def parse_dtype(value: Any) -> str:
    """``"half"``, ``torch.float16`` ... -> the canonical name (``"float16"``) or ``"auto"``."""
    name = str(value).removeprefix("torch.") if value is not None else "auto"
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {value!r}")
    return name


def parse_device(value: Any) -> str:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (a torch.device is accepted)."""
    text = str(value)
    kind, _, index = text.partition(":")
    if text == "auto" or (kind in ("cpu", "cuda") and (not index or index.isdigit())):
        return text
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {value!r}")


def parse_limit_mm(value: Any) -> dict[str, int] | None:
    """Most items per modality: a dict, JSON (``'{"image": 2}'``) or ``"image=2,video=1"``."""
    if value is None:
        return None
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        pairs = [item.partition("=") for item in value.split(",")]
        if any(not m.strip() or not sep or not c.strip().isdigit() for m, sep, c in pairs):
            raise ValueError(
                "limit_mm_per_prompt must be JSON like '{\"image\": 2}' or image=2[,video=1]; "
                f"got {value!r}"
            )
        return {m.strip(): int(c) for m, _, c in pairs}
    limits = parse_json_object(value, "limit_mm_per_prompt")
    for modality, count in limits.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(
                f"limit_mm_per_prompt[{modality!r}] must be an integer >= 0, got {count!r}"
            )
    return dict(limits)


def parse_mm_processor_kwargs(value: Any) -> dict | None:
    """Processor keyword arguments as a dict or a JSON object string."""
    return None if value is None else parse_json_object(value, "mm_processor_kwargs")


@dataclass
class EngineArgs:
    """The options of :class:`mmcore.Engine` (vLLM's names and defaults where vLLM has them).

    Build one from keyword arguments with :meth:`from_kwargs` (validates names, types and
    allowed values) or from a parsed command line with :meth:`from_cli_args`.
    """

    # ----------------------------------------------------------------- model and files
    model: str | None = option(
        parse=parse_path,
        help="checkpoint folder or Hugging Face hub id (default: the bundled demo model)",
    )
    tokenizer: str | None = option(
        parse=parse_path,
        help="tokenizer folder or hub id (default: the model's own)",
    )
    revision: str | None = option(help="hub revision (branch, tag or commit) of the model")
    tokenizer_revision: str | None = option(help="hub revision of the tokenizer")
    download_dir: str | None = option(
        parse=parse_path,
        help="folder hub downloads go to and are looked up in (default: the HF cache, HF_HOME)",
    )
    trust_remote_code: bool = option(
        False,
        help="accept checkpoints that declare remote code; mmcore runs its own implementation "
        "and never executes the checkpoint's code, so one that only exists as remote code "
        "is refused",
    )
    load_format: str = option(
        "auto", choices=LOAD_FORMATS, help="how weights are read; dummy = random weights"
    )
    model_impl: str = option(
        "auto",
        choices=MODEL_IMPLS,
        help="auto = mmcore's native implementation when one exists for the model type, else "
        "the Transformers backend (HF modeling code on mmcore's KV cache); mmcore or "
        "transformers force one",
    )
    # ----------------------------------------------------------------- numerics and device
    dtype: str = option(
        "auto",
        choices=DTYPES,
        parse=parse_dtype,
        help="weight and activation dtype; auto = the checkpoint's half type on GPU, float32 "
        "on CPU",
    )
    device: str = option(
        "auto", parse=parse_device, help="auto (CUDA when present), cpu, cuda or cuda:N"
    )
    seed: int = option(0, help="seed of unseeded sampling and of dummy weights")
    quantization: str | None = option(
        choices=QUANTIZATION_METHODS,
        help="weight quantisation: fp8 = W8A8 FP8 (e4m3) linear layers, quantised on load from a "
        "bf16/fp32 checkpoint or read from an FP8 checkpoint; default: as the checkpoint's "
        "quantization_config says (docs/quantization.md)",
    )
    quantize_vision: bool = option(
        False,
        help="with FP8, also quantise the vision encoder and projector (default: they keep "
        "the model dtype)",
    )
    # ----------------------------------------------------------------- scheduling and memory
    max_model_len: int | None = option(
        help="longest prompt + output in tokens (default: the model's max positions)"
    )
    max_num_seqs: int = option(256, help="most requests in one step")
    max_num_batched_tokens: int | None = option(
        help="most tokens in one step (default: 8192, at least max_model_len without chunked "
        "prefill)"
    )
    block_size: int = option(16, help="tokens per KV cache block")
    kv_cache_dtype: str = option(
        "auto",
        choices=KV_CACHE_DTYPES,
        help="KV cache element type: auto = the model dtype; fp8 (= fp8_e4m3) stores float8 "
        "e4m3 with per-layer, per-KV-head scales (the checkpoint's k_scale / v_scale when it "
        "has them, else 1.0): half the bytes of bf16, twice the blocks for the same memory",
    )
    gpu_memory_utilization: float = option(
        0.9, help="fraction of the GPU's memory the engine may use (weights, activations, KV)"
    )
    kv_cache_memory_bytes: int | None = option(
        help="bytes of KV cache; overrides gpu_memory_utilization (default: profiled on GPU, "
        "2 GiB on CPU)"
    )
    enable_prefix_caching: bool = option(
        True, help="reuse the KV blocks of identical prefixes (images included)"
    )
    enable_chunked_prefill: bool = option(True, help="split long prompts across steps")
    disable_hybrid_kv_cache_manager: bool = option(
        False,
        help="keep every KV block of sliding-window layers for the whole request (one block "
        "table for all layers) instead of freeing the blocks out of the window (Gemma 3)",
    )
    async_scheduling: bool | None = option(
        help="overlap scheduling with the GPU step (default: on for CUDA, off on CPU)"
    )
    enforce_eager: bool = option(False, help="never replay CUDA graphs")
    tensor_parallel_size: int = option(
        1, help="ranks (GPUs; worker processes on CPU) the model is sharded over"
    )
    distributed_executor_backend: str | None = option(
        choices=EXECUTOR_BACKENDS,
        help="how ranks run: uni = in-process (one rank), mp = a spawned worker per rank "
        "(default above one rank), ray = Ray actors (several nodes)",
    )
    mm_encoder_tp_mode: str = option(
        "weights",
        choices=MM_ENCODER_TP_MODES,
        help="weights = shard the vision encoder like the LM; data = each rank runs the whole "
        "encoder on a share of the step's images",
    )
    disable_custom_all_reduce: bool = option(
        False,
        help="reduce tensor-parallel activations with NCCL only (default: a one-shot "
        "peer-to-peer all-reduce for tensors up to 8 MiB on GPUs with peer access)",
    )
    # ----------------------------------------------------------------- multimodal inputs
    limit_mm_per_prompt: dict[str, int] | None = option(
        parse=parse_limit_mm,
        metavar="JSON",
        help="most items per modality in one prompt, e.g. '{\"image\": 2}' (or image=2)",
    )
    mm_processor_kwargs: dict | None = option(
        parse=parse_mm_processor_kwargs,
        metavar="JSON",
        help="keyword arguments of the multimodal processor, e.g. '{\"do_center_crop\": true}'",
    )
    mm_processor_cache_gb: float = option(
        1.0, help="GiB of processed multimodal inputs kept for reuse (0 disables)"
    )
    allowed_local_media_path: str | None = option(
        parse=parse_path,
        help="folder that local image paths and file:// URLs must lie in (default: none)",
    )
    allowed_media_domains: list[str] | None = option(
        metavar="HOST",
        help="hosts http(s) image URLs may be fetched from (default: any public host; "
        "loopback, private, link-local and metadata addresses are refused unless listed here)",
    )
    # ----------------------------------------------------------------- chat and serving
    served_model_name: list[str] | None = option(
        metavar="NAME",
        help="names the model is served under; the first is reported (default: the model)",
    )
    chat_template: str | None = option(
        parse=parse_path,
        help="Jinja chat template, or a file holding one (default: the checkpoint's)",
    )
    generation_config: str = option(
        "auto",
        help="defaults of sampling: auto = the checkpoint's generation_config.json, vllm = "
        "mmcore's own, or a folder holding a generation_config.json",
    )
    disable_log_stats: bool = option(
        False, help="do not log throughput and cache statistics every few seconds"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("max_num_seqs", "block_size", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_model_len", "max_num_batched_tokens", "kv_cache_memory_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.mm_processor_cache_gb < 0:
            raise ValueError(
                f"mm_processor_cache_gb must be >= 0, got {self.mm_processor_cache_gb}"
            )
        if self.distributed_executor_backend == "uni" and self.tensor_parallel_size > 1:
            raise ValueError(
                f"distributed_executor_backend='uni' runs one rank only, got "
                f"tensor_parallel_size={self.tensor_parallel_size} (use 'mp' or 'ray')"
            )
        if self.served_model_name is not None and not all(self.served_model_name):
            raise ValueError("served_model_name must not contain empty names")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineArgs:
        """Build from Python keyword arguments.

        Raises:
            TypeError: an argument that is not an Engine option (named, with the closest one).
            ValueError: a value of the wrong type, out of range or not among the choices.
        """
        check_known(cls, kwargs, "Engine")
        return cls(**kwargs)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        """Add every Engine option to ``parser`` as a group."""
        add_dataclass_args(parser.add_argument_group("engine options"), EngineArgs)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        """The EngineArgs of a parsed command line (options not given keep their defaults)."""
        return cls(**namespace_kwargs(args, cls))
