"""The multiprocess executor: one spawned worker process per tensor-parallel rank on this node.

Steps go to all workers through one shared-memory broadcast queue (flat arrays, no pickling);
new requests ride along as one pickled control message before the step that first needs them.
Only rank 0 answers, with the sampled tokens, over a pipe. Every wait watches the workers: a
worker that exits, reports an error, stops beating, or leaves a step unfinished for
``MMCORE_STEP_TIMEOUT_S`` seconds (default 30) fails the engine with a
:class:`WorkerFailedError` naming the rank, and every worker is stopped (no orphans).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import os
import socket
import time
import weakref
from multiprocessing.connection import wait

import numpy as np
import torch

from mmcore.executor.base import ParallelConfig, WorkerFailedError
from mmcore.executor.model_setup import KVSizing, ModelSpec, RunnerSpec, num_blocks_from_capacity
from mmcore.executor.shm_queue import ShmBroadcastQueue
from mmcore.executor.step_codec import (
    encode_control,
    encode_step,
    host_mask_arrays,
    removals_before,
)
from mmcore.executor.worker import (
    WorkerArgs,
    checkpoint_fingerprint,
    worker_main,
)
from mmcore.executor.worker_status import WorkerStatus
from mmcore.multimodal.registry import registered_models
from mmcore.sampling.sampler import SampledBatch

START_TIMEOUT_S = 1800.0  # loading a large checkpoint and capturing graphs
HEARTBEAT_TIMEOUT_S = 10.0
_POLL_S = 0.5
PROFILE_WRITE_TIMEOUT_S = 300  # a long trace takes a while to write


def step_timeout_s() -> float:
    return float(os.environ.get("MMCORE_STEP_TIMEOUT_S", "30"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_processes(processes: list, grace_s: float = 3.0) -> None:
    """Terminate, then kill, every worker still running; reap them all."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)


def _release(processes, resources) -> None:
    _stop_processes(processes)
    for resource in resources:
        with contextlib.suppress(OSError, TypeError, BufferError):
            resource.close()


class RemotePending:
    """A launched step whose tokens rank 0 has not sent yet; ``resolve()`` waits for them."""

    def __init__(self, executor: MultiprocExecutor, seq: int) -> None:
        self._executor, self._seq = executor, seq

    def resolve(self) -> SampledBatch:
        return self._executor._result(self._seq)


class MultiprocExecutor:
    """Spawns ``tensor_parallel_size`` workers and feeds them the engine's steps.

    Args:
        parallel: the parallel layout.
        spec: the model.
        sizing: the KV budget (per rank).
        device: ``cpu`` (gloo) or ``cuda`` (NCCL; rank r uses ``cuda:r``).
        cuda_graph_max_seqs: CUDA graph capture size per worker (0: eager).

    Raises:
        WorkerFailedError: a worker failed to start (message names the rank and its error).
    """

    def __init__(
        self,
        parallel: ParallelConfig,
        spec: ModelSpec,
        sizing: KVSizing,
        *,
        device: torch.device,
        cuda_graph_max_seqs: int,
    ) -> None:
        size = parallel.tensor_parallel_size
        if device.type == "cuda" and torch.cuda.device_count() < size:
            raise ValueError(
                f"tensor_parallel_size={size} needs {size} GPUs, "
                f"{torch.cuda.device_count()} are visible"
            )
        self.world_size = size
        self._dead: WorkerFailedError | None = None
        self._adds: list = []
        self._removed: list[int] = []
        self._launched = 0
        self._results: dict[int, SampledBatch] = {}
        self._received = 0
        self._inbox = [collections.deque() for _ in range(size)]
        self._counters = {
            "encoder_runs": 0,
            "cuda_graph_steps": 0,
            "overlapped_steps": 0,
            "peer_all_reduce": 0,
        }
        self.queue = ShmBroadcastQueue(size)
        self.status = WorkerStatus(size)
        ctx = mp.get_context("spawn")
        fingerprint = checkpoint_fingerprint(spec, sizing, size)
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        self.processes, self._conns = [], []
        for rank in range(size):
            receiver, sender = ctx.Pipe(duplex=False)
            args = WorkerArgs(
                rank=rank,
                world_size=size,
                init_method=init_method,
                device_type=device.type,
                mm_encoder_tp_mode=parallel.mm_encoder_tp_mode,
                peer_all_reduce=not parallel.disable_custom_all_reduce,
                spec=spec,
                sizing=sizing,
                queue_handle=self.queue.handle(),
                status_name=self.status.name,
                parent_pid=os.getpid(),
                fingerprint=fingerprint,
                registered_models=registered_models(_model_type(spec)),
                device_index=rank,
            )
            process = ctx.Process(
                target=worker_main, args=(args, sender), name=f"mmcore-tp{rank}", daemon=True
            )
            process.start()
            sender.close()
            self.processes.append(process)
            self._conns.append(receiver)
        # Stops the workers when the executor is collected or the interpreter exits.
        self._finalizer = weakref.finalize(
            self, _release, self.processes, [self.queue, self.status]
        )
        capacities = [self._expect(r, "capacity", START_TIMEOUT_S)[1] for r in range(size)]
        self.num_blocks = num_blocks_from_capacity(capacities, sizing)
        self.kv_block_bytes = max(c[0] for c in capacities)  # per rank
        self.kv_group_windows = capacities[0][2]  # every rank has the model's layers
        runner_spec = RunnerSpec(
            self.num_blocks, sizing.block_size, cuda_graph_max_seqs, sizing.max_model_len
        )
        self._put(encode_control(("init_cache", runner_spec)))
        for rank in range(size):
            self._expect(rank, "ready", START_TIMEOUT_S)

    # ------------------------------------------------------------------ engine calls
    def add_request(self, req_id: int, state) -> None:
        self._adds.append((req_id, state))

    def remove_request(self, req_id: int) -> None:
        self._removed.append(req_id)

    def launch(self, out, host_masks=None) -> RemotePending:
        """Broadcast one step (after the requests added since the last one), with the host
        masks of its sampling rows the driver computed, if any."""
        self._raise_if_dead()
        if self._adds:
            adds, self._adds = self._adds, []
            self._put(encode_control(("add", adds)))
        removed = np.asarray(removals_before(out, self._removed), dtype=np.int64)
        self._removed = [r for r in self._removed if r not in set(removed.tolist())]
        self._put(encode_step(out, {"removed_req_ids": removed, **host_mask_arrays(host_masks)}))
        self._launched += 1
        return RemotePending(self, self._launched)

    def profile(self, action: str, folder: str | None = None) -> None:
        """``"start"`` a profiler trace on every rank, or ``"stop"`` and wait until every rank
        has written its trace."""
        self._raise_if_dead()
        self._put(encode_control(("profile", action, folder)))
        if action != "stop":
            return
        for rank in range(self.world_size):
            while True:
                message = self._next_message(rank, time.monotonic() + PROFILE_WRITE_TIMEOUT_S)
                if message[0] == "profiled":
                    break
                if rank == 0 and message[0] == "result":  # a step still in flight
                    self._store_result(message)
                else:
                    self._fail(f"rank {rank} sent {message[0]!r}, expected 'profiled'", rank)

    def check_health(self) -> None:
        """Raise the :class:`WorkerFailedError` that stopped the workers, if any."""
        self._raise_if_dead()

    def counters(self) -> dict[str, int]:
        """Rank 0's runner counters as of its last result."""
        return dict(self._counters)

    def shutdown(self) -> None:
        """Stop the workers (politely, then by force) and free the shared memory."""
        if self._dead is None and all(p.is_alive() for p in self.processes):
            try:
                self._put(encode_control(("shutdown",)))
                for p in self.processes:
                    p.join(5)
            except WorkerFailedError:
                pass
        self._finalizer()

    # ------------------------------------------------------------------ watching the workers
    def _result(self, seq: int) -> SampledBatch:
        deadline = time.monotonic() + step_timeout_s()
        while seq not in self._results:
            self._raise_if_dead()
            message = self._next_message(0, deadline, step=seq)
            if message[0] != "result":
                self._fail(f"rank 0 sent {message[0]!r} instead of a step result", 0)
            self._store_result(message)
            deadline = time.monotonic() + step_timeout_s()
        return self._results.pop(seq)

    def _store_result(self, message: tuple) -> None:
        """Keep rank 0's ``("result", ...)`` message as the next step's sampled batch."""
        self._received += 1
        _, tokens, logprobs, prompt_logprobs, self._counters = message
        self._results[self._received] = SampledBatch(tokens, logprobs, prompt_logprobs)

    def _expect(self, rank: int, kind: str, timeout_s: float) -> tuple:
        message = self._next_message(rank, time.monotonic() + timeout_s)
        if message[0] != kind:
            self._fail(f"rank {rank} sent {message[0]!r}, expected {kind!r}", rank)
        return message

    def _next_message(self, rank: int, deadline: float, step: int | None = None) -> tuple:
        """The next message of ``rank``, watching every worker while waiting."""
        while not self._inbox[rank]:
            sentinels = {p.sentinel: r for r, p in enumerate(self.processes)}
            ready = wait(self._conns + list(sentinels), timeout=_POLL_S)
            for obj in ready:
                if obj in sentinels:
                    self._on_exit(sentinels[obj])
                else:
                    self._receive(self._conns.index(obj))
            if self._inbox[rank]:
                break
            self._check_liveness()
            if time.monotonic() > deadline:
                self._on_timeout(rank, step)
        return self._inbox[rank].popleft()

    def _receive(self, rank: int) -> None:
        try:
            message = self._conns[rank].recv()
        except (EOFError, OSError):
            self._on_exit(rank)
            return
        if message[0] == "error":
            self._fail(f"tensor-parallel worker rank {message[1]} failed:\n{message[2]}", rank)
        self._inbox[rank].append(message)

    def _on_exit(self, rank: int) -> None:
        conn = self._conns[rank]
        try:
            while conn.poll():  # an error report sent just before exiting says more
                self._receive_error_only(rank, conn.recv())
        except (EOFError, OSError):
            pass
        process = self.processes[rank]
        process.join(1)
        self._fail(
            f"tensor-parallel worker rank {rank} (pid {process.pid}) died "
            f"with exit code {process.exitcode}",
            rank,
        )

    def _receive_error_only(self, rank: int, message: tuple) -> None:
        if message[0] == "error":
            self._fail(f"tensor-parallel worker rank {message[1]} failed:\n{message[2]}", rank)
        self._inbox[rank].append(message)

    def _check_liveness(self) -> None:
        for rank, process in enumerate(self.processes):
            if not process.is_alive():
                self._on_exit(rank)
        stale = self.status.stale_ranks(HEARTBEAT_TIMEOUT_S)
        if stale:
            self._fail(
                f"tensor-parallel worker rank {stale[0]} stopped responding "
                f"(no heartbeat for {HEARTBEAT_TIMEOUT_S:.0f} s)",
                stale[0],
            )

    def _on_timeout(self, rank: int, step: int | None) -> None:
        if step is None:
            self._fail(f"tensor-parallel worker rank {rank} did not start in time", rank)
        behind = [r for r, n in enumerate(self.status.steps_done.tolist()) if n < step]
        self._fail(
            f"step {step} got no result within {step_timeout_s():.0f} s "
            f"(MMCORE_STEP_TIMEOUT_S); tensor-parallel worker rank(s) {behind or [0]} "
            "did not finish it",
            behind[0] if behind else 0,
        )

    def _put(self, parts: list) -> None:
        self._raise_if_dead()
        self.queue.put(parts, check=self._check_liveness)

    def _fail(self, message: str, rank: int | None) -> None:
        if self._dead is None:
            self._dead = WorkerFailedError(message, rank)
            self._finalizer()
        raise self._dead

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise self._dead


def _model_type(spec) -> str:
    """The checkpoint's ``model_type``: workers get only that ``register_model`` entry."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(spec.model_path).model_type
