"""The worker process of one tensor-parallel rank: its model shard, its KV cache, a step loop.

Start-up: join the process group, check that every rank sees the same config and checkpoint,
load the shard, report the KV capacity, build the runner once the driver sends the cache size,
report ready. Then each message of the broadcast queue is either a step (launched on the
runner; rank 0 sends the sampled tokens back) or a control message (new requests, shutdown).
Any exception is reported to the driver with the rank and ends the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import traceback
from dataclasses import dataclass

import torch

from mmcore.distributed.communication import all_gather_object
from mmcore.distributed.parallel_state import destroy_tensor_parallel, init_tensor_parallel
from mmcore.engine.torch_profiler import StepProfiler
from mmcore.executor.model_setup import (
    KVSizing,
    ModelSpec,
    build_runner,
    load_model_shard,
    measure_kv_capacity,
    runner_counters,
)
from mmcore.executor.remote_request import to_request_state
from mmcore.executor.shm_queue import ShmBroadcastQueue
from mmcore.executor.step_codec import KIND_CONTROL, decode, host_masks_of
from mmcore.executor.worker_status import WorkerStatus
from mmcore.multimodal.registry import register_model


@dataclass(frozen=True)
class WorkerArgs:
    """Everything a worker needs (pickled once, at spawn)."""

    rank: int
    world_size: int
    init_method: str
    device_type: str
    mm_encoder_tp_mode: str
    spec: ModelSpec
    sizing: KVSizing
    fingerprint: str
    device_index: int  # CUDA device of this rank as the process sees it
    queue_handle: dict | None = None  # mp: the step queue, worker status and driver pid
    status_name: str | None = None
    parent_pid: int | None = None
    registered_models: dict | None = None  # mmcore.register_model calls made in the driver
    peer_all_reduce: bool = True  # one-shot peer-to-peer all-reduce where every rank can


def checkpoint_fingerprint(spec: ModelSpec, sizing: KVSizing, world_size: int) -> str:
    """A digest of what must be equal on every rank: config.json, the safetensors headers
    (tensor names, shapes, dtypes, offsets) and the model / cache options."""
    digest = hashlib.sha256()
    digest.update(repr((spec, sizing, world_size)).encode())
    folder = spec.model_path
    with open(os.path.join(folder, "config.json"), "rb") as f:
        digest.update(f.read())
    if spec.load_format != "dummy":
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".safetensors"):
                continue
            with open(os.path.join(folder, name), "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                digest.update(name.encode() + f.read(min(header_len, 1 << 26)))
    return digest.hexdigest()


def _check_agreement(args: WorkerArgs) -> None:
    """Every rank computes the fingerprint itself; all must equal the driver's."""
    mine = checkpoint_fingerprint(args.spec, args.sizing, args.world_size)
    everyone = all_gather_object(mine)
    bad = [r for r, f in enumerate(everyone) if f != args.fingerprint]
    if bad:
        raise ValueError(
            f"ranks {bad} see a different config or checkpoint than the driver "
            f"({args.spec.model_path}): every rank must load the same files"
        )


class _ResultSender:
    """Rank 0: resolves launched steps in order on a thread and sends the tokens back, so the
    main thread can launch the next step while the device runs this one."""

    def __init__(self, conn, lock: threading.Lock, runner) -> None:
        self._conn, self._lock, self._runner = conn, lock, runner
        self._pending: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, name="mmcore-results", daemon=True).start()

    def submit(self, pending) -> None:
        self._pending.put(pending)

    def _run(self) -> None:
        while True:
            pending = self._pending.get()
            try:
                batch = pending.resolve()
                message = (
                    "result",
                    batch.token_ids,
                    batch.logprobs,
                    batch.prompt_logprobs,
                    runner_counters(self._runner),
                )
            except BaseException:  # noqa: BLE001 - reported to the driver, which stops the engine
                message = ("error", 0, traceback.format_exc())
            with self._lock:
                self._conn.send(message)


def _device(args: WorkerArgs) -> torch.device:
    if args.device_type == "cuda":
        device = torch.device("cuda", args.device_index)
        torch.cuda.set_device(device)
        return device
    # Ranks share the CPU cores: do not oversubscribe them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world_size))
    return torch.device("cpu")


class RankWorker:
    """One rank's model shard and runner, driven by decoded messages (mp and ray workers).

    Creating it joins the process group, checks the ranks agree, and loads the shard.
    """

    def __init__(self, args: WorkerArgs) -> None:
        self.args = args
        for model_type, (model_cls, processor_cls) in (args.registered_models or {}).items():
            register_model(model_type, model_cls, processor_cls)
        device = _device(args)
        init_tensor_parallel(
            args.rank,
            args.world_size,
            args.init_method,
            device=device,
            mm_encoder_tp_mode=args.mm_encoder_tp_mode,
            peer_all_reduce_dtype=args.spec.dtype if args.peer_all_reduce else None,
        )
        _check_agreement(args)
        self.model = load_model_shard(args.spec, device)
        self.runner = None
        self.profiler = StepProfiler(args.rank)

    def capacity(self) -> tuple:
        """(bytes of one KV block, KV bytes this rank can hold)."""
        return measure_kv_capacity(self.model, self.args.spec, self.args.sizing)

    def init_cache(self, runner_spec) -> None:
        self.runner = build_runner(self.model, runner_spec, self.args.spec)

    @torch.inference_mode()
    def handle(self, kind: int, message):
        """Apply one message; returns the launched step's pending tokens (None for control
        messages), or ``"shutdown"``."""
        if kind == KIND_CONTROL:
            if message[0] == "shutdown":
                return "shutdown"
            if message[0] == "init_cache":
                self.init_cache(message[1])
            elif message[0] == "add":
                for req_id, request in message[1]:
                    self.runner.add_request(req_id, to_request_state(self.runner, request))
            elif message[0] == "profile":
                if message[1] == "start":
                    self.profiler.start(message[2])
                else:
                    self.profiler.stop()
                    return "profiled"
            return None
        for req_id in message.removed_req_ids.tolist():
            self.runner.remove_request(req_id)
        return self.runner.launch(message, host_masks_of(message))

    def close(self) -> None:
        destroy_tensor_parallel()


def _serve(args: WorkerArgs, conn, lock: threading.Lock) -> None:
    status = WorkerStatus(args.world_size, name=args.status_name)
    status.start_heartbeat(args.rank, args.parent_pid)
    worker = RankWorker(args)
    broadcast = ShmBroadcastQueue(**args.queue_handle, reader=args.rank)
    with lock:
        conn.send(("capacity", worker.capacity()))
    kind, message = decode(broadcast.get())
    if kind != KIND_CONTROL or message[0] != "init_cache":
        raise RuntimeError(f"expected the cache set-up message, got {message!r}")
    worker.handle(kind, message)
    sender = _ResultSender(conn, lock, worker.runner) if args.rank == 0 else None
    with lock:
        conn.send(("ready",))
    while True:
        kind, message = decode(broadcast.get())
        pending = worker.handle(kind, message)
        if pending == "shutdown":
            break
        if pending == "profiled":
            with lock:
                conn.send(("profiled",))
            continue
        if pending is None:
            continue
        status.steps_done[args.rank] += 1
        if sender is not None:
            sender.submit(pending)
    broadcast.close()
    worker.close()
    status.close()


def worker_main(args: WorkerArgs, conn) -> None:
    """Entry point of a spawned worker; exits non-zero after reporting any error."""
    lock = threading.Lock()
    try:
        _serve(args, conn, lock)
    except BaseException:  # noqa: BLE001 - everything is reported, then the process ends
        with lock, contextlib.suppress(OSError):
            conn.send(("error", args.rank, traceback.format_exc()))
        os._exit(1)
