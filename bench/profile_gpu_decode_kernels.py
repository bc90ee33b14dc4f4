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

import torch

from profile_gpu_steps import (  # the script folder is on sys.path
    dummy_engine,
    finish,
    profiled_steps,
    start,
    timed_steps,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    engine = dummy_engine(args.model)
    start(engine, 2, seed=1)
    finish(engine)  # warm-up
    start(engine, 1, seed=2)
    for _ in range(6):  # prefill, then decode steps
        engine.step()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for graphs in (False, True):
        table = profiled_steps(engine, args.steps, graphs=graphs, top=args.top)
        print(
            f"\n### graphs={graphs}: {table['gpu_ms_per_step'] * 1e3:.0f} µs of kernels a step, "
            f"{table['launches_per_step']:.0f} kernels a step"
        )
        print("| µs a step | calls a step | µs a call | kernel |\n|---|---|---|---|")
        for row in table["top"]:
            us, calls = row["ms"] * 1e3, row["per_step"]
            print(f"| {us:.1f} | {calls:.1f} | {us / max(calls, 1e-9):.2f} | `{row['name']}` |")
    on, off = timed_steps(engine, 30, True), timed_steps(engine, 30, False)
    print(f"\nstep ms (synchronous): graphs {on:.3f}, eager {off:.3f}")
    finish(engine)


if __name__ == "__main__":
    main()
