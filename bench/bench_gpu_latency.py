"""Small-batch decode latency on a GPU against the inter-token-latency bound.

Model: LLaVA-1.5-7B with random weights (``load_format="dummy"``). Two engines are built one
after the other (run-to-run spread), each measuring:
  * batch 1: TTFT and inter-token latency of 5 requests (one 336x336 image + 64 text tokens,
    64 output tokens), medians, as ``bench_gpu_offline.py`` measures them;
  * batch B in {1, 2, 4, 8}: median decode step period (overlapped scheduling, graphs).
The ITL bound is (LM weight bytes + KV bytes of the context) / copy bandwidth measured here.

Usage: python bench/bench_gpu_latency.py --out DIR
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time

import numpy as np
import torch

from bench_gpu_offline import _latency as batch1_latency  # the script folder is on sys.path
from bench_gpu_offline import make_requests, measure_machine, model_shapes
from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

TEXT_LEN, OUTPUT_LEN = 64, 64


def step_period_ms(engine: Engine, batch: int, seed: int) -> float:
    """Median time between consecutive decode outputs with ``batch`` requests running."""
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)
    for i, r in enumerate(make_requests(batch, TEXT_LEN, 336, seed)):
        engine.add_request(f"b{batch}-{seed}-{i}", r, params)
    stamps = []
    while engine.has_unfinished_requests():
        if engine.step():
            stamps.append(time.perf_counter())
    return float(np.median(np.diff(stamps[2:]))) * 1e3


def latency(engine: Engine) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_LEN, ignore_eos=True)
    medians = batch1_latency(engine, make_requests(5, TEXT_LEN, 336, seed=20), params)
    return {"ttft_ms": medians["ttft_s"] * 1e3, "itl_ms": medians["itl_s"] * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--out", default=".")
    parser.add_argument("--runs", type=int, default=2, help="engines built one after the other")
    args = parser.parse_args()
    machine = measure_machine()
    path = write_dummy_checkpoint(args.model, os.path.join(tempfile.mkdtemp(), args.model))
    rows, shapes = [], None
    for run in range(args.runs):
        engine = Engine(path, load_format="dummy", device="cuda", max_num_seqs=16)
        shapes = model_shapes(engine)
        step_period_ms(engine, 2, seed=1)  # warm-up
        row = {"run": run, **latency(engine)}
        row["step_ms_by_batch"] = {b: step_period_ms(engine, b, seed=b) for b in (1, 2, 4, 8)}
        print("latency", json.dumps(row), flush=True)
        rows.append(row)
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    context = 1 + TEXT_LEN + 576 + OUTPUT_LEN / 2
    itl_bound_ms = (
        1e3
        * (shapes["lm_weight_bytes"] + context * shapes["kv_bytes_per_token"])
        / machine["copy_bytes_per_s"]
    )
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": args.model,
        "machine": machine,
        "itl_bound_ms": itl_bound_ms,
        "rows": rows,
    }
    print("latency bound", json.dumps({"itl_bound_ms": itl_bound_ms, **machine}), flush=True)
    with open(os.path.join(args.out, "bench_gpu_latency.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
