"""End-to-end effect of the Hopper (sm90a, wgmma) attention kernel on an H100 / H200.

Model: LLaVA-1.5-7B with random weights (``load_format="dummy"``). Offline throughput of requests
of one 336x336 image + 64 text tokens (128 output tokens, ignore_eos), and the time to first
token of long prompts (one image + 3,000 text tokens, batch 1), with the kernel on and off in
turns (``ops.hopper_attention``) in one process and one engine, two rounds each. Prefix caching
is off and every measurement has its own random prompts and images, so no run reuses another's
KV blocks or encoder outputs.

Usage: python bench/bench_gpu_hopper_attention.py --num-requests 300 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from bench_gpu_offline import _latency, _throughput, make_requests
from mmcore import Engine, SamplingParams
from mmcore.kernels import ops
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-requests", type=int, default=300)
    parser.add_argument("--long-text-len", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}; Hopper kernel selectable: "
          f"{ops.hopper_attention_selected(128)}", flush=True)  # fmt: skip
    path = write_dummy_checkpoint("llava-1.5-7b", os.path.join(tempfile.mkdtemp(), "llava"))
    engine = Engine(
        path, load_format="dummy", device="cuda", max_num_seqs=256, enable_prefix_caching=False
    )
    params = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True)
    # Two tokens: _latency times the first (TTFT) and the gap to the second.
    two_tokens = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    engine.generate(make_requests(8, 64, 336, seed=1), params, use_tqdm=False)  # warm-up
    rows = []
    for rnd in range(args.rounds):
        for enabled in (False, True):
            seed = 100 + 10 * rnd + int(enabled)  # fresh prompts and images for every run
            with ops.hopper_attention(enabled):
                thr = _throughput(
                    engine, make_requests(args.num_requests, 64, 336, seed=seed), params, 128
                )
                long_prompts = make_requests(5, args.long_text_len, 336, seed=seed + 5)
                _latency(engine, long_prompts[:1], two_tokens)  # warm-up of this shape
                ttft = _latency(engine, long_prompts, two_tokens)["ttft_s"]
            row = {"round": rnd, "hopper_attention": enabled, "req_per_s": thr["req_per_s"],
                   "long_prompt_ttft_ms": ttft * 1e3}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)

    def mean(key, enabled):
        return float(np.mean([r[key] for r in rows if r["hopper_attention"] == enabled]))

    summary = {
        "device": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
        "req_per_s_ratio_on_off": mean("req_per_s", True) / mean("req_per_s", False),
        "long_prompt_ttft_ratio_on_off": mean("long_prompt_ttft_ms", True)
        / mean("long_prompt_ttft_ms", False),
    }
    print("summary", json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
    with open(os.path.join(args.out, "bench_gpu_hopper_attention.json"), "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
