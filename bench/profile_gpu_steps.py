"""Where the GPU time of an engine step goes: torch profiler over real steps, kernels by category.

Four scenarios on LLaVA-1.5-7B with random fp16 weights (its config's dtype,
``load_format="dummy"``), each request one random 336x336 image + 64 text tokens, 128 output
tokens (ignore_eos):
  * ``decode-1``: one request, decode steps only;
  * ``decode-64``: 64 requests, decode steps only;
  * ``prefill-13-requests``: the first step of 13 requests (8,192 prompt tokens, 13 images);
  * ``offline-300``: 300 requests at once (max_num_seqs 256): steps from the middle of the run,
    as many requests decoding as the KV cache holds.
Steps run eagerly under the profiler (``profiled_steps(graphs=True)`` profiles graph replays
instead); the GPU time per step of the graph mode is timed separately with CUDA events. Prints one ``profile`` JSON line per
scenario (GPU ms per step by kernel category, kernel launches per step, top kernels) and writes
``profile_gpu_steps.json`` to ``--out`` (``profile_gpu_steps_w_fp8_kv_fp8.json`` with
``--quantization fp8 --kv-cache-dtype fp8``).

Usage: python bench/profile_gpu_steps.py --out DIR [--quantization fp8] [--kv-cache-dtype fp8]
       [--scenarios prefill,offline]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from bench_gpu_offline import make_requests  # the script folder is on sys.path
from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

#: Kernel name pattern -> category, first match wins.
CATEGORIES = (
    ("attention", re.compile(r"mmcore|flash|attention|fmha", re.I)),
    ("kv_write", re.compile(r"cache", re.I)),
    ("gemm", re.compile(r"gemm|gemv|sm90|sm80|cutlass|xmma|cublas|nvjet|splitK", re.I)),
    ("norm", re.compile(r"rms|norm|reduce", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|silu|mul|add", re.I)),
    ("copy_cat_index", re.compile(r"copy|cat|index|gather|scatter|fill", re.I)),
)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def start(engine: Engine, num: int, seed: int) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True)
    for i, prompt in enumerate(make_requests(num, 64, 336, seed)):
        engine.add_request(f"r{seed}-{i}", prompt, params)


def finish(engine: Engine) -> None:
    while engine.has_unfinished_requests():
        engine.step()
    torch.cuda.synchronize()


def kernel_table(prof, steps: int, top: int = 25) -> dict:
    """GPU time per step by category and the ``top`` kernels (ms per step)."""
    by_cat: dict[str, float] = {}
    kernels = []
    launches = 0
    for evt in prof.key_averages():
        device_us = getattr(evt, "self_device_time_total", None)
        if device_us is None:
            device_us = evt.self_cuda_time_total
        if device_us <= 0 or evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        launches += evt.count
        label = category(evt.key)
        by_cat[label] = by_cat.get(label, 0.0) + device_us / 1e3 / steps
        kernels.append((device_us / 1e3 / steps, evt.count / steps, label, evt.key[:110]))
    kernels.sort(reverse=True)
    return {
        "gpu_ms_per_step": sum(by_cat.values()),
        "launches_per_step": launches / steps,
        "by_category_ms": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
        "top": [
            {"ms": round(ms, 4), "per_step": round(n, 1), "cat": c, "name": k}
            for ms, n, c, k in kernels[:top]
        ],
    }


def profiled_steps(engine: Engine, steps: int, graphs: bool = False, top: int = 25) -> dict:
    """:func:`kernel_table` of ``steps`` steps, eager or (``graphs``) replayed from the decode
    graphs, whose kernels the profiler also records."""
    engine.runner.use_decode_graphs = graphs and engine.runner.decode_graphs is not None
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    engine.runner.use_decode_graphs = engine.runner.decode_graphs is not None
    return kernel_table(prof, steps, top)


def dummy_engine(model: str, **engine_args) -> Engine:
    """``model``'s architecture with random weights, one step per ``step()`` call (no async
    scheduling: profiles attribute to steps exactly), prefix caching off; ``engine_args`` (e.g.
    ``quantization``, ``kv_cache_dtype``) go to the Engine."""
    path = write_dummy_checkpoint(model, os.path.join(tempfile.mkdtemp(), model))
    engine = Engine(
        path,
        load_format="dummy",
        device="cuda",
        max_num_seqs=256,
        enable_prefix_caching=False,
        **engine_args,
    )
    engine.async_scheduling = False
    return engine


def timed_steps(engine: Engine, steps: int, graphs: bool) -> float:
    """Median wall ms per step (synchronised), with or without decode graphs."""
    engine.runner.use_decode_graphs = graphs and engine.runner.decode_graphs is not None
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    engine.runner.use_decode_graphs = engine.runner.decode_graphs is not None
    return float(np.median(times))


def decode_scenario(engine: Engine, batch: int, seed: int) -> dict:
    start(engine, batch, seed)
    for _ in range(12):  # prefill (8192 tokens per step) then a few decodes
        engine.step()
    row = {"scenario": f"decode-{batch}"}
    row.update(profiled_steps(engine, 10))
    row["step_ms_graphs"] = timed_steps(engine, 10, graphs=True)
    row["step_ms_eager"] = timed_steps(engine, 10, graphs=False)
    finish(engine)
    return row


def prefill_scenario(engine: Engine, num: int, seed: int) -> dict:
    """The first step of ``num`` fresh requests: one full chunk of prefill with its images."""
    start(engine, num, seed)
    row = {"scenario": f"prefill-{num}-requests"}
    row.update(profiled_steps(engine, 1))
    finish(engine)
    return row


def offline_scenario(engine: Engine, num: int, seed: int) -> dict:
    start(engine, num, seed)
    for _ in range(40):
        engine.step()
    row = {"scenario": f"offline-{num}"}
    row.update(profiled_steps(engine, 40))
    finish(engine)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--out", default=".")
    parser.add_argument("--quantization", default=None, help="e.g. fp8 (FP8 weights)")
    parser.add_argument("--kv-cache-dtype", default="auto", help="e.g. fp8 (FP8 KV cache)")
    parser.add_argument(
        "--scenarios", default="decode-1,decode-64,prefill,offline", help="which rows to run"
    )
    args = parser.parse_args()
    engine = dummy_engine(
        args.model, quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype
    )
    start(engine, 4, seed=1)
    finish(engine)  # warm-up
    scenarios = {
        "decode-1": lambda: decode_scenario(engine, 1, seed=2),
        "decode-64": lambda: decode_scenario(engine, 64, seed=3),
        "prefill": lambda: prefill_scenario(engine, 13, seed=5),
        "offline": lambda: offline_scenario(engine, 300, seed=4),
    }
    unknown = set(args.scenarios.split(",")) - set(scenarios)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {sorted(scenarios)}")
    rows = [run() for name, run in scenarios.items() if name in args.scenarios.split(",")]
    for row in rows:
        print("profile", json.dumps(row), flush=True)
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": args.model,
        "quantization": args.quantization,
        "kv_cache_dtype": args.kv_cache_dtype,
        "rows": rows,
    }
    tag = "".join(
        f"_{name}_{value}"
        for name, value in (("w", args.quantization), ("kv", args.kv_cache_dtype))
        if value not in (None, "auto")
    )
    with open(os.path.join(args.out, f"profile_gpu_steps{tag}.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
