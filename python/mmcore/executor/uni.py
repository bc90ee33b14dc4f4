"""The single-process executor: the engine's own process runs the whole model."""

from __future__ import annotations

import torch

from mmcore.engine.torch_profiler import StepProfiler
from mmcore.executor.model_setup import (
    KVSizing,
    ModelSpec,
    RunnerSpec,
    build_runner,
    load_model_shard,
    measure_kv_capacity,
    num_blocks_from_capacity,
    runner_counters,
)


class UniExecutor:
    """Loads the model in-process and runs steps on its :class:`ModelRunner` directly.

    Attributes:
        model: the model.
        runner: its runner (callers may inspect or wrap it, e.g. benchmarks timing ``launch``).
        num_blocks: KV blocks per layer.
        kv_block_bytes: bytes of one KV block across all layers.
    """

    def __init__(
        self, spec: ModelSpec, sizing: KVSizing, *, device: torch.device, cuda_graph_max_seqs: int
    ) -> None:
        self.model = load_model_shard(spec, device)
        capacity = measure_kv_capacity(self.model, spec, sizing)
        self.kv_block_bytes = capacity[0]
        self.kv_group_windows = capacity[2]
        self.num_blocks = num_blocks_from_capacity([capacity], sizing)
        self.runner = build_runner(
            self.model,
            RunnerSpec(
                self.num_blocks, sizing.block_size, cuda_graph_max_seqs, sizing.max_model_len
            ),
            spec,
        )
        self.profiler = StepProfiler()

    def add_request(self, req_id: int, state) -> None:
        self.runner.add_request(req_id, state)

    def remove_request(self, req_id: int) -> None:
        self.runner.remove_request(req_id)

    def launch(self, out, host_masks=None):
        return self.runner.launch(out, host_masks)

    def counters(self) -> dict[str, int]:
        """The runner's counters (encoder runs, CUDA graph steps, overlapped steps)."""
        return runner_counters(self.runner)

    def profile(self, action: str, folder: str | None = None) -> None:
        """``"start"`` a profiler trace into ``folder`` or ``"stop"`` and write it."""
        self.profiler.start(folder) if action == "start" else self.profiler.stop()

    def check_health(self) -> None:
        """In-process: nothing can fail apart from the call itself."""

    def shutdown(self) -> None:
        """Nothing to stop in-process."""
