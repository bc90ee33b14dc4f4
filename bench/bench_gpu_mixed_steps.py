"""Mixed steps on a GPU: decodes launched through the decode variant vs through prefill tiles.

A continuous-batching step often holds hundreds of decodes next to a few prefill chunks. With
``ops.MIXED_STEP_SPLIT`` on, paged attention launches the decode variant over the decodes and
the prefill variant over the chunks; off, every request runs through 128-row prefill tiles.

1. Kernel: one layer's paged attention (LLaVA-1.5-7B shape: 32 heads, d128, bf16, block 16) for
   mixed steps, split on vs off, next to the decodes alone and the chunks alone.
2. Engine: offline ``Engine.generate`` of LLaVA-1.5-7B dummy weights (one 336 px image + 64
   text tokens, 128 out per request), split on / off / on / off in one process.

Usage: python bench/bench_gpu_mixed_steps.py [--num-requests 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import time_ms  # noqa: E402  (the shared timing helper)
from mmcore.kernels import ops  # noqa: E402

DEV = "cuda"
HEADS, HEAD_DIM, BLOCK = 32, 128, 16


def _paged_step(decodes: int, context: int, chunks: list[int], gen: torch.Generator):
    """Query rows and caches of ``decodes`` one-token requests at ``context`` keys followed by
    prefill chunks of the given lengths (each over a fresh prompt)."""
    seq_lens = [context] * decodes + chunks
    queries = [1] * decodes + chunks
    blocks = [math.ceil(n / BLOCK) for n in seq_lens]
    shape = (sum(blocks), BLOCK, HEADS, HEAD_DIM)
    key_cache = torch.randn(shape, generator=gen, device=DEV).to(torch.bfloat16)
    value_cache = torch.randn(shape, generator=gen, device=DEV).to(torch.bfloat16)
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=DEV)
    at = 0
    for b, n in enumerate(blocks):
        tables[b, :n] = torch.arange(at, at + n, dtype=torch.int32)
        at += n
    query = torch.randn(sum(queries), HEADS, HEAD_DIM, generator=gen, device=DEV)
    starts = torch.tensor([0, *torch.tensor(queries).cumsum(0).tolist()], dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEV)
    return (query.to(torch.bfloat16), key_cache, value_cache, tables, lens, starts.to(DEV)), queries


def _attention_ms(args, queries: list[int]) -> float:
    bounds = dict(max_query_len=max(queries), min_query_len=min(queries),
                  max_seq_len=int(args[4].max()))  # fmt: skip
    return time_ms(lambda: ops.paged_attention(*args, HEAD_DIM**-0.5, **bounds), reps=20)


def bench_kernel(rows: list[dict]) -> None:
    gen = torch.Generator(device=DEV).manual_seed(0)
    print("| decodes x context + chunks | split ms | one launch ms | one / split | "
          "decodes alone ms | chunks alone ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for decodes, context, chunks in [(250, 700, [640, 640]), (250, 700, [64]),
                                     (64, 2000, [2048]), (16, 4000, [512])]:  # fmt: skip
        step, queries = _paged_step(decodes, context, chunks, gen)
        ops.MIXED_STEP_SPLIT = True
        split = _attention_ms(step, queries)
        ops.MIXED_STEP_SPLIT = False
        one = _attention_ms(step, queries)
        ops.MIXED_STEP_SPLIT = True
        dec, dq = _paged_step(decodes, context, [], gen)
        pre, pq = _paged_step(0, context, chunks, gen)
        alone_d, alone_p = _attention_ms(dec, dq), _attention_ms(pre, pq)
        name = f"{decodes} x {context} + {chunks}"
        print(f"| {name} | {split:.3f} | {one:.3f} | {one / split:.2f} | {alone_d:.3f} | "
              f"{alone_p:.3f} |")  # fmt: skip
        rows.append({"case": name, "split_ms": split, "one_launch_ms": one,
                     "decodes_alone_ms": alone_d, "chunks_alone_ms": alone_p})  # fmt: skip


def bench_engine(num_requests: int, rows: list[dict]) -> None:
    from bench_gpu_serving import build_requests  # noqa: E402  (the serving bench's workload)
    from mmcore import Engine
    from mmcore.bench.offline import run_offline_bench
    from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

    folder = write_dummy_checkpoint("llava-1.5-7b", os.path.join(tempfile.mkdtemp(), "llava"))
    engine = Engine(folder, device="cuda", seed=0, load_format="dummy")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    make = dict(text_tokens=64, output_len=128, image_size=336)
    run_offline_bench(engine, build_requests(tokenizer, 32, seed=1, **make), progress=False)
    print("\n| run | mixed-step split | req/s |\n|---|---|---:|")
    for i, split in enumerate([True, False, True, False]):
        ops.MIXED_STEP_SPLIT = split
        requests = build_requests(tokenizer, num_requests, seed=100 + i, **make)
        summary = run_offline_bench(engine, requests, progress=False)
        print(f"| {i + 1} | {'on' if split else 'off'} | {summary.request_throughput:.2f} |")
        rows.append({"run": i + 1, "split": split, "req_per_s": summary.request_throughput})
    ops.MIXED_STEP_SPLIT = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-requests", type=int, default=300)
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--out", default=None, help="folder for results_gpu_mixed_steps.json")
    args = parser.parse_args()
    if not torch.cuda.is_available() or ops._kernels() is None:
        raise SystemExit("needs a CUDA GPU and the built mmcore._kernels")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    kernel_rows: list[dict] = []
    engine_rows: list[dict] = []
    bench_kernel(kernel_rows)
    if not args.skip_engine:
        bench_engine(args.num_requests, engine_rows)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results_gpu_mixed_steps.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "kernel": kernel_rows,
                       "engine": engine_rows}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
