"""GPU idle gap between decode steps, with and without overlapped (async) scheduling.

Each launched step is bracketed by two CUDA events recorded on the compute stream: one before
its first device work (the input copies) and one after its last (sampling). The idle gap
between steps N and N+1 is ``elapsed(end_N, start_N+1)``: the time the GPU waited for the host
to enqueue the next step. Without overlap the host reads step N's tokens, updates the scheduler,
detokenizes and schedules N+1 while the GPU waits; with overlap N+1 is enqueued while N runs.
Only pairs of full decode-only steps (every request decoding one token) are counted.

Model: LLaVA-1.5-7B architecture with random fp16 weights (its config's dtype); ``--batch``
requests of one random 336x336 image + 64 text tokens each, 128 output tokens (ignore_eos),
max_num_seqs = batch.

Usage: python bench/bench_gpu_overlap.py --batch 64 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from bench_gpu_offline import make_requests  # the script folder is on sys.path
from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint


class StepEvents:
    """Records CUDA events around every step of ``engine``: from its forward's launch to the
    end of its sampling's launch (the runner's ``forward`` then ``sample``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.records: list[tuple[torch.cuda.Event, torch.cuda.Event, bool, float, float]] = []
        self._forward, self._sample = engine.runner.forward, engine.runner.sample
        self._open: tuple[torch.cuda.Event, bool, float] | None = None
        engine.runner.forward = self._timed_forward
        engine.runner.sample = self._timed_sample

    def _timed_forward(self, out):
        if out.num_tokens == 0:
            return self._forward(out)
        decode = out.num_tokens == out.num_reqs and len(out.encoder_handles) == 0
        start = torch.cuda.Event(enable_timing=True)
        host_start = time.perf_counter()
        start.record()
        self._open = (start, decode, host_start)
        return self._forward(out)

    def _timed_sample(self, step, host_masks=None):
        pending = self._sample(step, host_masks)
        if self._open is not None:
            start, decode, host_start = self._open
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.records.append((start, end, decode, host_start, time.perf_counter()))
            self._open = None
        return pending

    def restore(self) -> None:
        """Puts the runner's own methods back."""
        self.engine.runner.forward, self.engine.runner.sample = self._forward, self._sample

    def close(self, batch: int) -> dict:
        self.restore()
        torch.cuda.synchronize()
        gaps, busy, walls, launch_host = [], [], [], []
        decode_flags = [r[2] for r in self.records]
        for i in range(1, len(self.records)):
            prev, cur = self.records[i - 1], self.records[i]
            if not (prev[2] and cur[2]):
                continue
            gaps.append(prev[1].elapsed_time(cur[0]) * 1e3)  # µs
            busy.append(cur[0].elapsed_time(cur[1]) * 1e3)
            walls.append(prev[1].elapsed_time(cur[1]) * 1e3)
            launch_host.append((cur[4] - cur[3]) * 1e6)
        if not gaps:
            return {"batch": batch, "steps": len(self.records), "decode_pairs": 0}
        return {
            "batch": batch,
            "steps": len(self.records),
            "decode_steps": int(sum(decode_flags)),
            "decode_pairs": len(gaps),
            "idle_gap_us_median": float(np.median(gaps)),
            "idle_gap_us_mean": float(np.mean(gaps)),
            "idle_gap_us_p90": float(np.percentile(gaps, 90)),
            "gpu_busy_us_median": float(np.median(busy)),
            "step_period_us_median": float(np.median(walls)),
            "launch_host_us_median": float(np.median(launch_host)),
            "idle_fraction": float(np.sum(gaps) / np.sum(walls)),
        }


def measure(engine: Engine, batch: int, output_len: int, seed: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    events = StepEvents(engine)
    start = time.perf_counter()
    outputs = engine.generate(make_requests(batch, 64, 336, seed), params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    result = events.close(batch)
    result["elapsed_s"] = elapsed
    result["out_tok_per_s"] = batch * output_len / elapsed
    result["token_ids"] = [o.outputs[0].token_ids for o in outputs]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()

    path = write_dummy_checkpoint(args.model, os.path.join(tempfile.mkdtemp(), args.model))
    # No prefix caching: every run computes the same prefill (the runs reuse the same prompts).
    engine = Engine(
        path,
        load_format="dummy",
        device="cuda",
        max_num_seqs=args.batch,
        enable_prefix_caching=False,
    )
    measure(engine, 8, 16, seed=1)  # warm-up (lazy kernels, allocator)
    rows = []
    for graphs in (True, False):
        engine.runner.use_decode_graphs = graphs
        for repeat in range(args.repeats):
            tokens = {}
            for overlap in (False, True):
                engine.async_scheduling = overlap
                row = measure(engine, args.batch, args.output_len, seed=100 + repeat)
                tokens[overlap] = row.pop("token_ids")
                row.update(cuda_graphs=graphs, overlap=overlap, repeat=repeat)
                rows.append(row)
                print("overlap", json.dumps(row), flush=True)
            rows[-1]["same_tokens_as_sync"] = tokens[True] == tokens[False]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": args.model,
        "output_len": args.output_len,
        "rows": rows,
    }
    with open(os.path.join(args.out, "bench_gpu_overlap.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
