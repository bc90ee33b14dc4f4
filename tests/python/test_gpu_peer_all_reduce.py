"""The one-shot peer-to-peer all-reduce on 2 GPUs: NCCL's sums, also replayed in a CUDA graph,
and a TP=2 engine that uses it gives TP=1's tokens (float32) and reports it in ``stats()``."""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp

from mmcore import Engine, SamplingParams
from mmcore.testing.tiny_checkpoints import build_tiny_llava

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
]

SHAPES = [(1, 4096), (3, 4096), (64, 5120), (1, 1000), (640, 4096)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_group(rank: int, port: int, failures, check) -> None:
    """``check(rank, device)`` on rank ``rank`` of a 2-GPU NCCL group; a failure goes to the
    parent (the other rank may hang otherwise)."""
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, device_id=device
    )
    try:
        check(rank, device)
    except BaseException as exc:
        failures.put(f"rank {rank}: {exc!r} at {traceback.format_exc(limit=-2)}")
        os._exit(1)
    finally:
        dist.destroy_process_group()


def _check_all_reduce(rank: int, device: torch.device) -> None:
    from mmcore.distributed.peer_all_reduce import DEFAULT_MAX_BYTES, create_peer_all_reduce

    for dtype in (torch.bfloat16, torch.float32):
        peer = create_peer_all_reduce(dist.group.WORLD, rank, 2, device, dtype)
        assert peer is not None, "peer all-reduce unavailable on 2 NVLink GPUs"
        for shape in SHAPES:
            gen = torch.Generator(device).manual_seed(100 * rank + shape[0])
            x = torch.randn(shape, device=device, generator=gen).to(dtype)
            if x.numel() * x.element_size() > DEFAULT_MAX_BYTES:
                assert not peer.takes(x)  # NCCL's (communication.all_reduce)
                continue
            assert peer.takes(x)
            expected = x.float().clone()
            dist.all_reduce(expected)
            got = peer.all_reduce(x)
            assert got.shape == x.shape and got.dtype == dtype
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)
        # 64 reductions in a row inside one graph (a decode step's count), replayed with
        # new inputs: each result is the sum of both ranks' values.
        static = torch.zeros((2, 4096), device=device, dtype=dtype)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            peer.all_reduce(static)  # warm-up outside capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = static
            for _ in range(64):
                y = peer.all_reduce(y) * 0.5  # sum of 2 equal halves: stays the same
        for trial in range(3):
            value = float(trial + 1 + rank)  # rank 0: t+1, rank 1: t+2
            static.fill_(value)
            graph.replay()
            torch.cuda.synchronize()
            # First reduction: (t+1)+(t+2); every later one keeps it (both ranks agree).
            want = (2 * trial + 3) / 2
            assert torch.all(y.float() == want), (trial, y.float().unique().tolist(), want)
    assert create_peer_all_reduce(dist.group.WORLD, rank, 2, device, torch.float16) is None


NORM_SHAPES = [(1, 4096), (3, 4096), (33, 3584), (256, 4096), (2, 8192), (5, 1000)]


def _check_add_rms_norm(rank: int, device: torch.device) -> None:
    from mmcore.distributed.peer_all_reduce import DEFAULT_NORM_MAX_BYTES, create_peer_all_reduce
    from mmcore.kernels import reference

    for dtype in (torch.bfloat16, torch.float32):
        peer = create_peer_all_reduce(dist.group.WORLD, rank, 2, device, dtype)
        assert peer is not None, "peer all-reduce unavailable on 2 NVLink GPUs"
        for rows, hidden in NORM_SHAPES:
            gen = torch.Generator(device).manual_seed(100 * rank + rows)
            shared = torch.Generator(device).manual_seed(7 + rows)  # same on both ranks
            x = torch.randn((rows, hidden), device=device, generator=gen).to(dtype)
            residual = torch.randn((rows, hidden), device=device, generator=shared).to(dtype)
            weight = torch.rand(hidden, device=device, generator=shared).to(dtype) + 0.5
            if x.numel() * x.element_size() > DEFAULT_NORM_MAX_BYTES:
                # Reduced, then added and normalized in two kernels (communication.py).
                assert not peer.takes_norm(x, residual, weight)
                continue
            assert peer.takes_norm(x, residual, weight), ("takes_norm", dtype, rows, hidden)
            reduced = x.clone()
            dist.all_reduce(reduced)
            want_out, want_summed = reference.fused_add_rms_norm(reduced, residual, weight, 1e-5)
            out, summed = peer.add_rms_norm(x, residual, weight, 1e-5)
            # The sum of two ranks, rounded once, plus the residual: bit-exact.
            assert torch.equal(summed, want_summed), (dtype, rows, hidden)
            tol = 1e-5 if dtype == torch.float32 else 1.6e-2
            torch.testing.assert_close(out, want_out, atol=tol, rtol=tol)
            # Every rank holds the same bits (the residual stream must not drift apart).
            both = [torch.empty_like(out) for _ in range(2)]
            dist.all_gather(both, out)
            diff = (both[0].float() - both[1].float()).abs().max().item()
            assert torch.equal(both[0], both[1]), ("ranks differ", dtype, rows, hidden, diff)
        # A decoder step's pattern inside one graph: 64 fused reductions of 1 and 3 rows
        # in turn, replayed with new inputs and with eager calls in between.
        hidden = 4096
        weight = torch.ones(hidden, device=device, dtype=dtype)
        statics = [torch.zeros((n, hidden), device=device, dtype=dtype) for n in (1, 3)]
        zeros = [torch.zeros_like(t) for t in statics]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for t, z in zip(statics, zeros):
                peer.add_rms_norm(t, z, weight, 0.0)  # warm-up outside capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sums = []
            for i in range(64):
                k = i % 2
                _, summed = peer.add_rms_norm(statics[k], zeros[k], weight, 0.0)
                sums.append(summed)
        for trial in range(3):
            for k, t in enumerate(statics):
                t.copy_(
                    torch.arange(t.numel(), device=device).view(t.shape).remainder(97).to(dtype)
                    + (trial + rank + k)
                )
            graph.replay()
            # Eager calls between replays move the per-block halves on as the graph does.
            eager = peer.add_rms_norm(statics[1], zeros[1], weight, 0.0)[1]
            torch.cuda.synchronize()
            for i, got in enumerate(sums + [eager]):
                k = i % 2 if i < 64 else 1
                base = torch.arange(statics[k].numel(), device=device).remainder(97)
                want = (2 * base + 2 * trial + 2 * k + 1).view(statics[k].shape)
                assert torch.equal(got.float(), want.float()), (dtype, trial, i)


def _run_two_ranks(check) -> None:
    ctx = torch_mp.get_context("spawn")
    failures = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_in_group, args=(r, port, failures, check)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert not alive and not errors and all(p.exitcode == 0 for p in procs), errors


def test_peer_add_rms_norm_equals_all_reduce_then_norm_and_replays_in_graphs():
    _run_two_ranks(_check_add_rms_norm)


def test_peer_all_reduce_equals_nccl_and_replays_in_graphs():
    _run_two_ranks(_check_all_reduce)


@pytest.mark.parametrize("disable", [False, True])
def test_tp2_engine_with_peer_all_reduce_float32_equals_tp1(tmp_path, disable):
    model_dir = build_tiny_llava(
        tmp_path / "m",
        seed=3,
        text_overrides={"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4},
        vision_overrides={"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2},
    )
    kwargs = dict(device="cuda", dtype="float32", max_num_seqs=8, kv_cache_memory_bytes=64 << 20)
    prompts = [f"USER: count to {i}\nASSISTANT:" for i in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    expected = [
        o.outputs[0].token_ids for o in Engine(model_dir, **kwargs).generate(prompts, params)
    ]
    torch.cuda.empty_cache()
    engine = Engine(model_dir, tensor_parallel_size=2, disable_custom_all_reduce=disable, **kwargs)
    try:
        got = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
        stats = engine.stats()
    finally:
        engine.shutdown()
    assert got == expected
    assert stats["peer_all_reduce"] == (0 if disable else 1)
