"""The Ray executor: one Ray actor per tensor-parallel rank, placed by a placement group, so
the ranks may sit on several nodes (join a cluster with ``ray start`` / ``RAY_ADDRESS``; without
one, a local Ray instance is started).

Each message (step arrays or a control message, encoded as for the ``mp`` executor) is put into
Ray's object store once and every actor reads it from there; actors run their calls in order.
Collectives go through torch.distributed (rendezvous at rank 0's node). Only rank 0 returns
the sampled tokens. A dead actor, an actor error or a step unfinished for
``MMCORE_STEP_TIMEOUT_S`` fails the engine with a :class:`WorkerFailedError` naming the rank;
all actors are then killed.
"""

from __future__ import annotations

import contextlib
import socket
import time

import numpy as np

from mmcore.executor.errors import WorkerFailedError
from mmcore.executor.model_setup import (
    KVSizing,
    ModelSpec,
    RunnerSpec,
    num_blocks_from_capacity,
    runner_counters,
)
from mmcore.executor.mp import START_TIMEOUT_S, RemotePending, step_timeout_s
from mmcore.executor.step_codec import (
    decode,
    encode_control,
    encode_step,
    host_mask_arrays,
    removals_before,
)
from mmcore.executor.worker import (
    RankWorker,
    WorkerArgs,
    checkpoint_fingerprint,
)
from mmcore.multimodal.registry import registered_models
from mmcore.sampling.sampler import SampledBatch

_POLL_S = 0.5


_PING_TIMEOUT_S = 5.0  # a dead actor's ping fails at once; a live one stuck in a collective waits


def _join(parts: list) -> bytes:
    return b"".join(p.tobytes() if isinstance(p, np.ndarray) else bytes(p) for p in parts)


class RayRank:
    """The actor body of one rank (made a Ray actor class by :class:`RayExecutor`)."""

    def __init__(self) -> None:
        self.worker: RankWorker | None = None

    def rendezvous(self) -> str:
        """``tcp://<this node's IP>:<free port>`` for torch.distributed (asked of rank 0)."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ip}:{port}"

    def setup(self, args: WorkerArgs) -> tuple[int, int]:
        self.worker = RankWorker(args)
        return self.worker.capacity()

    def execute(self, data: bytes):
        """Apply one message; rank 0 returns a launched step's (tokens, logprobs, prompt
        logprobs, counters)."""
        kind, message = decode(bytearray(data))
        pending = self.worker.handle(kind, message)
        if pending is None or isinstance(pending, str) or self.worker.args.rank != 0:
            return None
        batch = pending.resolve()
        return (
            batch.token_ids,
            batch.logprobs,
            batch.prompt_logprobs,
            runner_counters(self.worker.runner),
        )

    def ping(self) -> bool:
        """Liveness probe: answers as soon as the actor is idle."""
        return True

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


class RayExecutor:
    """Tensor-parallel ranks as Ray actors. Args as for :class:`MultiprocExecutor`."""

    def __init__(self, parallel, spec: ModelSpec, sizing: KVSizing, *, device, cuda_graph_max_seqs):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:  # joins RAY_ADDRESS when set, else starts a local instance
            ray.init(include_dashboard=False, log_to_driver=False)
        size = parallel.tensor_parallel_size
        self.world_size = size
        self._dead: WorkerFailedError | None = None
        self._adds, self._removed = [], []
        self._counters = {
            "encoder_runs": 0,
            "cuda_graph_steps": 0,
            "overlapped_steps": 0,
            "peer_all_reduce": 0,
        }
        self._outstanding: list[tuple[int, object]] = []  # (rank, ref) not yet checked
        self._step_refs: dict[int, list] = {}
        self._launched = 0
        gpu = device.type == "cuda"
        bundle = {"GPU": 1, "CPU": 1} if gpu else {"CPU": 1}
        self._group = ray.util.placement_group([bundle] * size, strategy="PACK")
        try:
            ray.get(self._group.ready(), timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            ray.util.remove_placement_group(self._group)
            raise ValueError(
                f"the Ray cluster cannot place {size} ranks of {bundle} (see `ray status`)"
            ) from exc
        actor_cls = ray.remote(RayRank)
        self.actors = [
            actor_cls.options(
                num_cpus=1,
                num_gpus=1 if gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self._group, placement_group_bundle_index=rank
                ),
            ).remote()
            for rank in range(size)
        ]
        init_method = self._get(0, self.actors[0].rendezvous.remote(), START_TIMEOUT_S)
        fingerprint = checkpoint_fingerprint(spec, sizing, size)
        refs = [
            actor.setup.remote(
                WorkerArgs(
                    rank=rank,
                    world_size=size,
                    init_method=init_method,
                    device_type=device.type,
                    mm_encoder_tp_mode=parallel.mm_encoder_tp_mode,
                    peer_all_reduce=not parallel.disable_custom_all_reduce,
                    spec=spec,
                    sizing=sizing,
                    fingerprint=fingerprint,
                    registered_models=registered_models(_model_type(spec)),
                    device_index=0,  # Ray shows each actor its own GPU only
                )
            )
            for rank, actor in enumerate(self.actors)
        ]
        capacities = [self._get(rank, ref, START_TIMEOUT_S) for rank, ref in enumerate(refs)]
        self.num_blocks = num_blocks_from_capacity(capacities, sizing)
        self.kv_block_bytes = max(c[0] for c in capacities)  # per rank
        self.kv_group_windows = capacities[0][2]  # every rank has the model's layers
        runner_spec = RunnerSpec(
            self.num_blocks, sizing.block_size, cuda_graph_max_seqs, sizing.max_model_len
        )
        for rank, ref in enumerate(self._broadcast(encode_control(("init_cache", runner_spec)))):
            self._get(rank, ref, START_TIMEOUT_S)

    # ------------------------------------------------------------------ engine calls
    def add_request(self, req_id: int, state) -> None:
        self._adds.append((req_id, state))

    def remove_request(self, req_id: int) -> None:
        self._removed.append(req_id)

    def launch(self, out, host_masks=None) -> RemotePending:
        self.check_health()
        if self._adds:
            adds, self._adds = self._adds, []
            self._outstanding += enumerate(self._broadcast(encode_control(("add", adds))))
        removed = np.asarray(removals_before(out, self._removed), dtype=np.int64)
        self._removed = [r for r in self._removed if r not in set(removed.tolist())]
        self._launched += 1
        self._step_refs[self._launched] = self._broadcast(
            encode_step(out, {"removed_req_ids": removed, **host_mask_arrays(host_masks)})
        )
        return RemotePending(self, self._launched)

    def profile(self, action: str, folder: str | None = None) -> None:
        """``"start"`` a profiler trace on every rank, or ``"stop"`` and wait for the traces."""
        self.check_health()
        refs = self._broadcast(encode_control(("profile", action, folder)))
        if action == "stop":
            for rank, ref in enumerate(refs):
                self._get(rank, ref, 300)
        else:
            self._outstanding += enumerate(refs)

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def check_health(self) -> None:
        if self._dead is not None:
            raise self._dead

    def shutdown(self) -> None:
        """Stop the actors, free the placement group (and the Ray instance this started)."""
        ray = self._ray
        if self._dead is None:
            with contextlib.suppress(Exception):  # shutting down anyway
                ray.get([a.close.remote() for a in self.actors], timeout=30)
        self._release()

    # ------------------------------------------------------------------ internals
    def _broadcast(self, parts: list) -> list:
        ref = self._ray.put(_join(parts))  # one copy in the object store, read by every rank
        return [actor.execute.remote(ref) for actor in self.actors]

    def _result(self, seq: int) -> SampledBatch:
        refs = self._step_refs.pop(seq)
        deadline = time.monotonic() + step_timeout_s()
        watched = self._outstanding + list(enumerate(refs))
        self._outstanding = []
        while True:
            self.check_health()
            ready, _ = self._ray.wait([ref for _, ref in watched], num_returns=len(watched),
                                      timeout=_POLL_S)  # fmt: skip
            ready_ids = set(ready)
            for rank, ref in watched:
                if ref in ready_ids:
                    value = self._get(rank, ref, 0)
                    if ref is refs[0]:
                        tokens, logprobs, prompt_logprobs, self._counters = value
                        result = SampledBatch(tokens, logprobs, prompt_logprobs)
            if refs[0] in ready_ids:
                self._outstanding = [(r, ref) for r, ref in watched if ref not in ready_ids]
                return result
            watched = [(r, ref) for r, ref in watched if ref not in ready_ids]
            if time.monotonic() > deadline:
                behind = sorted({r for r, _ in watched})
                self._fail(
                    f"step {seq} got no result within {step_timeout_s():.0f} s "
                    f"(MMCORE_STEP_TIMEOUT_S); tensor-parallel rank(s) {behind} did not finish it",
                    behind[0],
                )

    def _get(self, rank: int, ref, timeout_s: float):
        ray = self._ray
        try:
            return ray.get(ref, timeout=timeout_s if timeout_s > 0 else None)
        except ray.exceptions.GetTimeoutError:
            self._fail(f"tensor-parallel rank {rank} (Ray actor) did not answer in time", rank)
        except ray.exceptions.RayActorError as exc:
            self._fail(f"tensor-parallel rank {rank} (Ray actor) died: {exc}", rank)
        except ray.exceptions.RayTaskError as exc:
            # A collective fails on every rank when one dies: name the dead one, the cause.
            dead = self._dead_rank(exclude=rank)
            if dead is not None:
                self._fail(
                    f"tensor-parallel rank {dead} (Ray actor) died; rank {rank}'s step failed "
                    f"with it:\n{exc}",
                    dead,
                )
            self._fail(f"tensor-parallel rank {rank} (Ray actor) failed:\n{exc}", rank)
        except ray.exceptions.RayError as exc:  # e.g. the actor's node is unreachable
            self._fail(f"tensor-parallel rank {rank} (Ray actor) is unavailable: {exc}", rank)

    def _dead_rank(self, exclude: int) -> int | None:
        """The first other rank whose actor is gone (a busy one only times out: alive)."""
        ray = self._ray
        for rank, actor in enumerate(self.actors):
            if rank == exclude:
                continue
            try:
                ray.get(actor.ping.remote(), timeout=_PING_TIMEOUT_S)
            except ray.exceptions.RayActorError:
                return rank
            except ray.exceptions.GetTimeoutError:
                continue
        return None

    def _fail(self, message: str, rank: int | None) -> None:
        if self._dead is None:
            self._dead = WorkerFailedError(message, rank)
            self._release()
        raise self._dead

    def _release(self) -> None:
        ray = self._ray
        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []
        if self._group is not None:
            ray.util.remove_placement_group(self._group)
            self._group = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()


def _model_type(spec) -> str:
    """The checkpoint's ``model_type``: workers get only that ``register_model`` entry."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(spec.model_path).model_type
