"""Every kernel of a batch-1 decode step: how many a step, microseconds a call, with CUDA graphs.

Model: LLaVA-1.5-7B with random weights (``load_format="dummy"``, fp16), one request (a
336x336 image + 64 text tokens), decoding. The torch profiler records 20 steps eagerly, then 20
replayed from the decode CUDA graphs (the profiler sees graph kernels); the table lists kernel
time a step, calls a step and time a call. Then the median step wall time, graphs on and off
(synchronous steps, so it includes the host's scheduling; the ITL of ``bench_gpu_latency.py``
overlaps it).

Usage (GPU): python bench/profile_gpu_decode_kernels.py [--model llava-1.5-7b] [--top 30]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from mmcore import Engine
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint
from profile_gpu_steps import finish, start, timed_steps  # the script folder is on sys.path


def kernel_rows(engine: Engine, graphs: bool, steps: int) -> list[tuple[float, float, float, str]]:
    """(µs a step, calls a step, µs a call, name) of each GPU kernel over ``steps`` steps."""
    runner = engine.runner
    runner.use_decode_graphs = graphs and runner.decode_graphs is not None
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    runner.use_decode_graphs = runner.decode_graphs is not None
    rows = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", 0)
        if us <= 0 or evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        rows.append((us / steps, evt.count / steps, us / max(evt.count, 1), evt.key[:100]))
    return sorted(rows, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    path = write_dummy_checkpoint(args.model, os.path.join(tempfile.mkdtemp(), args.model))
    engine = Engine(
        path, load_format="dummy", device="cuda", max_num_seqs=256, enable_prefix_caching=False
    )
    engine.async_scheduling = False  # one step per call: the profile attributes to steps
    start(engine, 2, seed=1)
    finish(engine)  # warm-up
    start(engine, 1, seed=2)
    for _ in range(6):  # prefill, then decode steps
        engine.step()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for graphs in (False, True):
        rows = kernel_rows(engine, graphs, args.steps)
        total = sum(r[0] for r in rows)
        calls = sum(r[1] for r in rows)
        print(
            f"\n### graphs={graphs}: {total:.0f} µs of kernels a step, {calls:.0f} kernels a step"
        )
        print("| µs a step | calls a step | µs a call | kernel |\n|---|---|---|---|")
        for us, n, per_call, name in rows[: args.top]:
            print(f"| {us:.1f} | {n:.1f} | {per_call:.2f} | `{name}` |")
    on, off = timed_steps(engine, 30, True), timed_steps(engine, 30, False)
    print(f"\nstep ms (synchronous): graphs {on:.3f}, eager {off:.3f}")
    finish(engine)


if __name__ == "__main__":
    main()
