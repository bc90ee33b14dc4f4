"""The executor seam: what the engine calls instead of a model runner, and how to pick one.

The engine keeps the scheduler, input processing and detokenizing; an executor owns the model
(or its shards) and its KV cache. Both kinds offer the runner's calls::

    add_request(req_id, state)   remove_request(req_id)   launch(step) -> pending
    pending.resolve() -> SampledBatch   counters()   check_health()   shutdown()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mmcore.executor.errors import WorkerFailedError
from mmcore.executor.model_setup import KVSizing, ModelSpec

__all__ = ["WorkerFailedError", "ParallelConfig", "create_executor"]

BACKENDS = ("uni", "mp", "ray")
MM_ENCODER_TP_MODES = ("weights", "data")


@dataclass(frozen=True)
class ParallelConfig:
    """Engine options of the parallel layout (vLLM's names).

    Attributes:
        tensor_parallel_size: ranks the model is sharded over.
        distributed_executor_backend: ``"uni"`` (in-process, one rank only), ``"mp"``
            (spawned local workers, the default for several ranks) or ``"ray"`` (Ray actors,
            several nodes).
        mm_encoder_tp_mode: ``"weights"`` shards the vision encoder like the LM; ``"data"``
            replicates it and splits each step's images over the ranks.
        disable_custom_all_reduce: NCCL for every all-reduce (else the one-shot peer-to-peer
            all-reduce of :mod:`mmcore.distributed.peer_all_reduce` for small tensors).
    """

    tensor_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    mm_encoder_tp_mode: str = "weights"
    disable_custom_all_reduce: bool = False

    @property
    def backend(self) -> str:
        if self.distributed_executor_backend is not None:
            return self.distributed_executor_backend
        return "uni" if self.tensor_parallel_size == 1 else "mp"

    def validate(self) -> None:
        """Raises ValueError naming the bad option."""
        size = self.tensor_parallel_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"tensor_parallel_size must be an integer >= 1, got {size!r}")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"distributed_executor_backend must be one of {BACKENDS}, got {self.backend!r}"
            )
        if self.backend == "uni" and size > 1:
            raise ValueError("distributed_executor_backend='uni' runs one rank only")
        if self.mm_encoder_tp_mode not in MM_ENCODER_TP_MODES:
            raise ValueError(
                f"mm_encoder_tp_mode must be one of {MM_ENCODER_TP_MODES}, "
                f"got {self.mm_encoder_tp_mode!r}"
            )


def check_shardable(hf_config, parallel: ParallelConfig, model_impl: str = "auto") -> None:
    """Refuse models and head counts the ranks cannot split, before any worker starts.

    Raises:
        ValueError: naming the model kind or the count that does not divide.
    """
    from mmcore.layers.linear import divide, kv_heads_per_rank
    from mmcore.models.transformers_backend.loader import use_transformers_backend
    from mmcore.multimodal.registry import get_model_class

    size = parallel.tensor_parallel_size
    if size == 1:
        return
    model_type = hf_config.model_type
    if use_transformers_backend(model_type, model_impl):
        raise ValueError(
            f"the Transformers backend (model type {model_type!r}, model_impl={model_impl!r}) "
            f"runs on one rank: tensor_parallel_size > 1 is not supported with it"
        )
    if not getattr(get_model_class(model_type), "supports_tensor_parallel", False):
        raise ValueError(
            f"model type {model_type!r} is not built from tensor-parallel layers: "
            f"tensor_parallel_size > 1 is not supported for it (see docs/distributed.md)"
        )
    text = getattr(hf_config, "text_config", hf_config)
    divide(text.num_attention_heads, size, "num_attention_heads")
    kv_heads_per_rank(getattr(text, "num_key_value_heads", None) or text.num_attention_heads, size)
    if getattr(text, "intermediate_size", None):
        divide(text.intermediate_size, size, "intermediate_size")
    if parallel.mm_encoder_tp_mode != "weights":
        return
    vision = getattr(hf_config, "vision_config", None)
    if vision is not None:
        heads = getattr(vision, "num_attention_heads", None) or getattr(vision, "num_heads", 0)
        _check_encoder_heads("vision", heads, size)
    audio = getattr(hf_config, "audio_config", None)
    if audio is not None:
        _check_encoder_heads("audio", getattr(audio, "encoder_attention_heads", 0), size)


def _check_encoder_heads(kind: str, heads: int, size: int) -> None:
    """An encoder sharded by heads needs them divisible by the ranks (else: data mode)."""
    if heads % size:
        raise ValueError(
            f"the {kind} encoder's {heads} heads are not divisible by tensor_parallel_size "
            f"({size}); use mm_encoder_tp_mode='data' to replicate it"
        )


class Executor(Protocol):
    """What the engine needs from an executor (see the module docstring)."""

    num_blocks: int

    def add_request(self, req_id: int, state) -> None: ...
    def remove_request(self, req_id: int) -> None: ...
    def launch(self, out): ...
    def counters(self) -> dict[str, int]: ...
    def check_health(self) -> None: ...
    def shutdown(self) -> None: ...


def create_executor(
    parallel: ParallelConfig,
    spec: ModelSpec,
    sizing: KVSizing,
    *,
    device,
    cuda_graph_max_seqs: int,
):
    """Start the executor ``parallel`` asks for: load the model (shards), size the KV cache.

    Args:
        parallel: the parallel layout options (validated here).
        spec: the model to build.
        sizing: the KV cache budget.
        device: the engine's device (workers use ``cuda:<rank>`` on CUDA).
        cuda_graph_max_seqs: largest decode batch captured as a CUDA graph (0: eager).
    """
    parallel.validate()
    if parallel.backend == "uni":
        from mmcore.executor.uni import UniExecutor

        return UniExecutor(spec, sizing, device=device, cuda_graph_max_seqs=cuda_graph_max_seqs)
    if parallel.backend == "ray":
        from mmcore.executor.ray_executor import RayExecutor

        return RayExecutor(
            parallel, spec, sizing, device=device, cuda_graph_max_seqs=cuda_graph_max_seqs
        )
    from mmcore.executor.mp import MultiprocExecutor

    return MultiprocExecutor(
        parallel, spec, sizing, device=device, cuda_graph_max_seqs=cuda_graph_max_seqs
    )
