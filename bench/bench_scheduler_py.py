"""Scheduler steady-state benchmark through the Python binding (same workload as
bench_scheduler.cc): schedule() + update_from_output() per step with about N running requests,
one image per prompt (64 shared identifiers), Poisson arrivals.

Run: ``PYTHONPATH=python python bench/bench_scheduler_py.py``
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from mmcore import _core

PROMPT_TEXT = 96
IMAGE_LEN = 160
MEAN_OUTPUT = 128
NUM_IMAGES = 64
WARMUP_STEPS = 400
MEASURED_STEPS = 2000


def make_feature(identifier: str, offset: int, length: int):
    """An image item: _core.MMFeature when bound, else an object with the same attributes."""
    if hasattr(_core, "MMFeature"):
        return _core.MMFeature(_core.Modality.IMAGE, identifier, offset, length, length, None)
    return SimpleNamespace(
        modality=_core.Modality.IMAGE,
        identifier=identifier,
        offset=offset,
        length=length,
        num_embeds=length,
        embed_mask=None,
    )


def add_request(sched, rid: int, rng: np.random.Generator) -> None:
    tokens = rng.integers(0, 32000, PROMPT_TEXT + IMAGE_LEN, dtype=np.int32)
    before = int(rng.integers(0, PROMPT_TEXT))
    image = make_feature(f"image-{int(rng.integers(0, NUM_IMAGES))}", before, IMAGE_LEN)
    max_tokens = MEAN_OUTPUT // 2 + int(rng.integers(0, MEAN_OUTPUT))
    sched.add_request(rid, tokens, [image], max_tokens=max_tokens, ignore_eos=True)


def run(target_running: int) -> dict[str, float]:
    """Runs the steady-state loop; returns per-step wall-time statistics in microseconds."""
    cfg = _core.SchedulerConfig()
    cfg.block_size = 16
    cfg.max_num_seqs = target_running
    cfg.max_num_batched_tokens = 8192
    cfg.max_model_len = 4096
    cfg.num_blocks = target_running * (PROMPT_TEXT + IMAGE_LEN + 2 * MEAN_OUTPUT) // 16 * 5 // 4
    cfg.encoder_budget = 8192
    cfg.encoder_cache_size = 64 * IMAGE_LEN * 2
    sched = _core.Scheduler(cfg)
    rng = np.random.default_rng(1)
    next_id = 0
    for _ in range(target_running):
        add_request(sched, next_id, rng)
        next_id += 1
    times = []
    for step in range(WARMUP_STEPS + MEASURED_STEPS):
        for _ in range(rng.poisson(target_running / MEAN_OUTPUT)):
            add_request(sched, next_id, rng)
            next_id += 1
        t0 = time.perf_counter()
        out = sched.schedule()
        sampled = np.full(len(out.sampling_req_ids), 7, dtype=np.int32)
        sched.update_from_output(out, sampled)
        elapsed = (time.perf_counter() - t0) * 1e6
        if step >= WARMUP_STEPS:
            times.append(elapsed)
    sched.check_invariants()
    arr = np.array(times)
    return {"mean": arr.mean(), "p50": np.percentile(arr, 50), "p99": np.percentile(arr, 99)}


def main() -> None:
    print(f"scheduler through Python: {MEASURED_STEPS} measured steps after {WARMUP_STEPS} warm-up")
    print("| target running | wall mean us | wall p50 us | wall p99 us |")
    print("|---:|---:|---:|---:|")
    for n in (256, 1024):
        r = run(n)
        print(f"| {n} | {r['mean']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} |")


if __name__ == "__main__":
    main()
