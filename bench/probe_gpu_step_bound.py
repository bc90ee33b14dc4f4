"""Is a batch-1 decode step GPU- or host-bound? The decode CUDA graph of batch 1 replayed back to
back (GPU time of a step, no host work) against the engine's step period with overlapped
scheduling, then cProfile of 60 engine steps (where the host thread's time goes).

Model: LLaVA-1.5-7B with random weights (``load_format="dummy"``), one request (a 336x336 image
+ 64 text tokens), decoding.

Usage (GPU): python bench/probe_gpu_step_bound.py [--model llava-1.5-7b]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import numpy as np
import torch

from profile_gpu_steps import dummy_engine, finish, start  # the script folder is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    engine = dummy_engine(args.model)
    start(engine, 2, seed=1)
    finish(engine)  # warm-up
    engine.async_scheduling = True
    start(engine, 1, seed=2)
    for _ in range(8):  # prefill, then decode steps
        engine.step()
    graphs = engine.runner.decode_graphs
    graph = graphs.graphs[graphs.sizes[0]]
    torch.cuda.synchronize()
    for _ in range(2):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(50):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        print(
            f"graph replay (size {graphs.sizes[0]}): {begin.elapsed_time(end) / 50 * 1e3:.1f} us a step"
        )
    stamps = [time.perf_counter() for _ in range(40) if engine.step()]
    print(f"engine step period: median {np.median(np.diff(stamps)) * 1e3:.3f} ms")
    profiler, steps, t0 = cProfile.Profile(), 0, time.perf_counter()
    profiler.enable()
    while engine.has_unfinished_requests() and steps < 60:
        engine.step()
        steps += 1
    profiler.disable()
    print(f"{steps} steps under cProfile: {(time.perf_counter() - t0) / steps * 1e3:.3f} ms a step")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())
    finish(engine)


if __name__ == "__main__":
    main()
