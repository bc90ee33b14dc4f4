"""``mmcore bench offline``: the random multimodal workload through ``Engine.generate``."""

from __future__ import annotations

import time
from typing import Any

from mmcore.bench.stats import BenchSummary, RequestResult, summarize
from mmcore.bench.workload import BenchRequest


def run_offline_bench(
    engine: Any, requests: list[BenchRequest], progress: bool = True
) -> BenchSummary:
    """Generate every request in one ``Engine.generate`` call (EOS ignored, greedy).

    Args:
        engine: a constructed ``mmcore.Engine``.
        requests: the workload.
        progress: show the engine's progress bar.

    Returns:
        Request and output-token throughput (latencies are not measured offline).
    """
    from mmcore.sampling_params import SamplingParams

    prompts = [engine.chat_prompt(r.messages()) for r in requests]
    params = [
        SamplingParams(temperature=0.0, max_tokens=r.output_len, ignore_eos=True) for r in requests
    ]
    start = time.perf_counter()
    outputs = engine.generate(prompts, params, use_tqdm=progress)
    duration = time.perf_counter() - start
    results = [
        RequestResult(
            ok=True,
            output_tokens=sum(len(c.token_ids) for c in out.outputs),
            prompt_tokens=len(out.prompt_token_ids),
            latency_s=duration,
        )
        for out in outputs
    ]
    summary = summarize(results, duration)
    summary.ttft, summary.tpot = {}, {}  # one batch: per-request latencies mean nothing here
    return summary
