"""Dense GEMV (cpp/kernels/dense_gemv.cu) against cuBLAS (``F.linear``) for decode-sized
products: the linear shapes of LLaVA-1.5-7B, Qwen2-VL-7B's LM and Llama-3-8B-class LMs at 1-4
rows, each timed in a CUDA graph over 8 weight copies (more bytes than the L2 holds, as in a
decode step, where every layer's weights are new), on the same GPU in the same run. The
gate_up shapes also time the GEMV with its SiLU-and-mul epilogue against the GEMV followed by
the silu_and_mul kernel (``gated_us`` vs ``gemv_then_silu_us``).

Usage: python bench/bench_gpu_gemv.py [--dtype float16] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from mmcore.kernels.gemv_ops import dense_gemv, dense_gemv_silu_mul
from mmcore.kernels.ops import silu_and_mul

SHAPES = {  # name: (n, k)
    "llava7b.qkv": (12288, 4096),
    "llava7b.o_proj": (4096, 4096),
    "llava7b.gate_up": (22016, 4096),
    "llava7b.down_proj": (4096, 11008),
    "qwen2_7b.qkv": (4608, 3584),
    "qwen2_7b.o_proj": (3584, 3584),
    "qwen2_7b.gate_up": (37888, 3584),
    "qwen2_7b.down_proj": (3584, 18944),
    "llama3_8b.qkv": (6144, 4096),
    "llama3_8b.gate_up": (28672, 4096),
    "llama3_8b.down_proj": (4096, 14336),
    "llava7b_tp2.qkv": (6144, 4096),  # one rank's share at tensor_parallel_size=2
    "llava7b_tp2.o_proj": (4096, 2048),
    "llava7b_tp2.gate_up": (11008, 4096),
    "llava7b_tp2.down_proj": (4096, 5504),
}
COPIES = 8


def graph_us(fn, reps: int = 20) -> float:
    """Microseconds a replay of a CUDA graph capturing ``fn``."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--rows", default="1,2,4")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    results = []
    for name, (n, k) in SHAPES.items():
        weights = [torch.randn(n, k, device="cuda", dtype=dtype) * 0.02 for _ in range(COPIES)]
        for rows in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(rows, k, device="cuda", dtype=dtype)
            err = (dense_gemv(x, weights[0]).float() - F.linear(x, weights[0]).float()).abs().max()
            cublas = graph_us(lambda x=x, ws=weights: [F.linear(x, w) for w in ws]) / COPIES
            gemv = graph_us(lambda x=x, ws=weights: [dense_gemv(x, w) for w in ws]) / COPIES
            row = {
                "shape": name, "n": n, "k": k, "rows": rows, "dtype": args.dtype,
                "cublas_us": round(cublas, 2), "gemv_us": round(gemv, 2),
                "speedup": round(cublas / gemv, 3),
                "gemv_TBps": round(n * k * dtype.itemsize / gemv / 1e6, 3),
                "cublas_TBps": round(n * k * dtype.itemsize / cublas / 1e6, 3),
                "max_abs_diff_vs_cublas": float(err),
            }  # fmt: skip
            if name.endswith(".gate_up"):
                gated = graph_us(lambda x=x, ws=weights: [dense_gemv_silu_mul(x, w) for w in ws])
                two = graph_us(lambda x=x, ws=weights: [silu_and_mul(dense_gemv(x, w)) for w in ws])
                row["gated_us"] = round(gated / COPIES, 2)
                row["gemv_then_silu_us"] = round(two / COPIES, 2)
            print(json.dumps(row), flush=True)
            results.append(row)
        weights.clear()  # free this shape's copies before the next
    summary = {
        "device": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "rows": results,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
