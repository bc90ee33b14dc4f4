"""Where the wall time of the 1,000-request offline run goes: input processing, GPU busy, GPU idle.

Same workload as ``bench_gpu_offline.py`` (LLaVA-1.5-7B dummy, one 336x336 image + 64 text
tokens, 128 output tokens, defaults: CUDA graphs + overlapped scheduling). Every launched step is
bracketed by CUDA events (``bench_gpu_overlap.StepEvents``); the run is split into the time
before the first launch (``generate()`` processing every prompt), the GPU time of prefill /
mixed steps and of decode-only steps, and the GPU idle time between steps.

Usage: python bench/bench_gpu_timeline.py --num-requests 1000 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from bench_gpu_offline import make_requests  # the script folder is on sys.path
from bench_gpu_overlap import StepEvents
from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    path = write_dummy_checkpoint(args.model, os.path.join(tempfile.mkdtemp(), args.model))
    engine = Engine(path, load_format="dummy", device="cuda", max_num_seqs=256)
    params = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True)
    engine.generate(make_requests(8, 64, 336, seed=1), params, use_tqdm=False)  # warm-up
    requests = make_requests(args.num_requests, 64, 336, seed=10)
    events = StepEvents(engine)
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine.generate(requests, params, use_tqdm=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    events.restore()
    first_launch = events.records[0][3] - start
    busy = {"decode": 0.0, "prefill_or_mixed": 0.0}
    idle = 0.0
    for i, (ev_start, ev_end, decode, _, _) in enumerate(events.records):
        busy["decode" if decode else "prefill_or_mixed"] += ev_start.elapsed_time(ev_end) / 1e3
        if i:
            idle += max(0.0, events.records[i - 1][1].elapsed_time(ev_start) / 1e3)
    launch_host = sum(r[4] - r[3] for r in events.records)
    row = {
        "device": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "num_requests": args.num_requests,
        "elapsed_s": elapsed,
        "req_per_s": args.num_requests / elapsed,
        "before_first_launch_s": first_launch,
        "gpu_busy_s": busy,
        "gpu_idle_between_steps_s": idle,
        "steps": len(events.records),
        "decode_steps": sum(1 for r in events.records if r[2]),
        "host_launch_s": launch_host,
        "after_last_step_s": elapsed - first_launch - sum(busy.values()) - idle,
    }
    print("timeline", json.dumps(row), flush=True)
    with open(os.path.join(args.out, "bench_gpu_timeline.json"), "w") as f:
        json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
