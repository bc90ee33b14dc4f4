"""GPU time of the skinny GEMM kernel (``mmcore::skinny_gemm``) against F.linear (cuBLAS).

Run on a GPU with mmcore._kernels built:  ``python bench/bench_skinny_gemm.py``.
Llama-2-7B decode shapes (out[M, N] = x[M, K] @ W[N, K]^T) for M in 1, 2, 4, 8, float16 and
bfloat16. Each case cycles through enough copies of the weight (>= 4x a 50 MiB L2) that no call
finds its weight in L2. Two timings, both medians of CUDA-event timings after warm-up:

- ``*_us``: one call between two events, 100 reps; a ``torch.cuda._sleep`` queued first keeps
  the GPU busy while the host launches, so host overhead stays out but the kernel's own
  ramp-up and tail are in.
- ``*_graph_us``: a CUDA graph of 32 back-to-back calls, per call (no launch gaps; the next
  kernel's ramp-up overlaps the previous one's tail).

``*_GBps`` is weight bytes / time (x and out are < 0.1% of the traffic), ``of_copy_bw`` that
over the device copy bandwidth measured in the same run (``dst.copy_(src)`` of 2 GiB, read +
written bytes / time). One JSON line per case: ``{"op": "skinny_gemm", ...}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics

import torch
import torch.nn.functional as F

from mmcore.kernels import gemm_ops

DEV = "cuda"
SHAPES = {  # Llama-2-7B (LLaVA-1.5-7B LM): name -> (N, K)
    "qkv": (12288, 4096),
    "o": (4096, 4096),
    "gate_up": (22016, 4096),
    "down": (4096, 11008),
    "lm_head": (32000, 4096),
}
MIN_ROTATION_BYTES = 256 << 20  # weights cycled per case: several times the H100's 50 MiB L2
GRAPH_CALLS = 32


def _events() -> tuple[torch.cuda.Event, torch.cuda.Event]:
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def time_calls_us(calls, reps: int, warmup: int = 10) -> float:
    """Median microseconds of one call, cycling through ``calls``; the GPU is kept busy by a
    sleep kernel while the host enqueues each timed call."""
    for i in range(warmup):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start, end = _events()
        torch.cuda._sleep(200_000)  # ~100 us: the host queues the call before the GPU gets there
        start.record()
        calls[i % len(calls)]()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def time_graph_us(calls, reps: int) -> float:
    """Median microseconds per call of a CUDA graph of ``GRAPH_CALLS`` back-to-back calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(GRAPH_CALLS):
            calls[i % len(calls)]()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(GRAPH_CALLS):
            calls[i % len(calls)]()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = _events()
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / GRAPH_CALLS)
    del graph
    return statistics.median(times)


def copy_bandwidth(reps: int = 20) -> float:
    """Bytes/s of a 2 GiB device-to-device copy (read + write counted)."""
    src = torch.empty(1 << 31, dtype=torch.uint8, device=DEV).random_()
    dst = torch.empty_like(src)
    ms = []
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    for _ in range(reps):
        start, end = _events()
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        ms.append(start.elapsed_time(end))
    return 2 * (1 << 31) / (statistics.median(ms) * 1e-3)


def _gbps(num_bytes: int, us: float) -> float:
    return round(num_bytes / (us * 1e-6) / 1e9, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--rows", default="1,2,4,8", help="comma-separated M values")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"of {list(SHAPES)}")
    parser.add_argument("--reps", type=int, default=100)
    args = parser.parse_args()
    if gemm_ops._kernels() is None:
        raise SystemExit("mmcore._kernels is not built with skinny_gemm")
    gen = torch.Generator(device=DEV).manual_seed(0)
    copy_bw = copy_bandwidth()
    device = torch.cuda.get_device_name()
    print(json.dumps({"op": "copy_bandwidth", "device": device, "GBps": round(copy_bw / 1e9, 1)}))
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for shape in args.shapes.split(","):
            n, k = SHAPES[shape]
            weight_bytes = n * k * torch.finfo(dtype).bits // 8
            copies = max(1, -(-MIN_ROTATION_BYTES // weight_bytes))
            weights = [
                (torch.randn(n, k, generator=gen, device=DEV) * k**-0.5).to(dtype)
                for _ in range(copies)
            ]
            for m in (int(v) for v in args.rows.split(",")):
                x = torch.randn(m, k, generator=gen, device=DEV).to(dtype)
                assert gemm_ops.skinny_gemm_supported(x, weights[0])
                ours = [lambda x=x, w=w: gemm_ops.skinny_gemm(x, w) for w in weights]
                cublas = [lambda x=x, w=w: F.linear(x, w) for w in weights]
                ours_us = time_calls_us(ours, args.reps)
                cublas_us = time_calls_us(cublas, args.reps)
                ours_g = time_graph_us(ours, args.reps)
                cublas_g = time_graph_us(cublas, args.reps)
                gbps = functools.partial(_gbps, weight_bytes)
                print(json.dumps({
                    "op": "skinny_gemm", "shape": shape, "n": n, "k": k, "m": m,
                    "dtype": dtype_name, "device": device, "weight_bytes": weight_bytes,
                    "ours_us": round(ours_us, 2), "cublas_us": round(cublas_us, 2),
                    "speedup": round(cublas_us / ours_us, 3),
                    "ours_graph_us": round(ours_g, 2), "cublas_graph_us": round(cublas_g, 2),
                    "graph_speedup": round(cublas_g / ours_g, 3),
                    "ours_GBps": gbps(ours_us), "cublas_GBps": gbps(cublas_us),
                    "ours_graph_GBps": gbps(ours_g), "cublas_graph_GBps": gbps(cublas_g),
                    "copy_GBps": round(copy_bw / 1e9, 1),
                    "of_copy_bw": round(weight_bytes / (ours_g * 1e-6) / copy_bw, 3),
                }), flush=True)  # fmt: skip
            del weights
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
