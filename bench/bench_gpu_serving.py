"""`mmcore serve` vs `Engine.generate` on one workload in one run, and serving latency under load.

Model: LLaVA-1.5-7B's architecture with random weights (``load_format="dummy"`` over
:func:`mmcore.testing.dummy_checkpoint.write_dummy_checkpoint`). Each request: one distinct
random-noise 336x336 image (sent as a PNG data URL) + random words fitted to ``--text-tokens``
tokens of the model's tokenizer, ``--output-len`` tokens out, greedy, ignore_eos. Both paths get
the same chat messages: offline renders them with ``Engine.chat_prompt`` (as the server does,
not timed) and times one ``Engine.generate`` call; the prompt token counts of the two paths are
compared. Phases, each engine in its own process so GPU memory is freed between them:

1. offline: ``Engine.generate`` of all requests after a warm-up -> req/s.
2. saturation: `mmcore serve`, every request sent at once from an async client, streamed
   -> req/s, served / offline ratio (issue 14's goal: >= 0.95), TTFT and TPOT.
3. load: the same server, Poisson arrivals (seeded) at 50% and 90% of the saturation rate
   (fresh requests, each phase capped in requests and seconds) -> TTFT p50/p99, TPOT
   (time per output token after the first) p50/p99, achieved req/s.

On CUDA `mmcore serve` runs its engine in an engine core process (``--engine-core-process``,
the CUDA default); ``--server-args=--no-engine-core-process`` measures the engine thread.

Usage:
    python bench/bench_gpu_serving.py --out DIR          # GPU, writes DIR/results_gpu_serving.json
    python bench/bench_gpu_serving.py --out DIR --server-args=--no-engine-core-process
    python bench/bench_gpu_serving.py --smoke --out DIR  # CPU, tiny LLaVA, a few requests
    python bench/bench_gpu_serving.py --smoke --out DIR --server-args=--engine-core-process
    python bench/bench_gpu_serving.py --out DIR --profile-dir DIR/spy --load-fractions
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

from mmcore.bench.serve_client import arrival_offsets, run_serve_bench
from mmcore.bench.stats import BenchSummary
from mmcore.bench.workload import _WORDS, BenchRequest, random_png_data_url

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_process import free_port, start_server, stop_server, wait_healthy  # noqa: E402
from spy import (  # noqa: E402
    SpyRecorder,
    busiest_threads,
    cpu_seconds,
    cpu_seconds_delta,
    thread_cpu_seconds,
)

# Seeds of the workloads: the offline and saturation phases share one; warm-ups and load
# phases get their own, so no prefix or processor cache entry carries over between them.
SEED_MAIN, SEED_WARMUP, SEED_LOAD = 10, 20, 30


def fit_text(tokenizer, rng: np.random.Generator, text_tokens: int) -> str:
    """Random common words, as many as fit in ``text_tokens`` tokens of ``tokenizer``.

    Args:
        tokenizer: a Hugging Face tokenizer (called without special tokens).
        rng: source of the words.
        text_tokens: the token budget (>= 1).

    Returns:
        The text (at least one word, even if that word alone is longer than the budget).
    """
    if text_tokens < 1:
        raise ValueError(f"text_tokens must be >= 1, got {text_tokens}")
    words: list[str] = []
    while True:
        candidate = words + [_WORDS[int(rng.integers(len(_WORDS)))]]
        count = len(tokenizer(" ".join(candidate), add_special_tokens=False).input_ids)
        if words and count > text_tokens:
            return " ".join(words)
        words = candidate
        if count >= text_tokens:
            return " ".join(words)


def build_requests(
    tokenizer, num: int, *, text_tokens: int, output_len: int, image_size: int, seed: int
) -> list[BenchRequest]:
    """``num`` requests of one random ``image_size``-square PNG image and fitted text.

    Args:
        tokenizer: the served model's tokenizer (fits the text).
        num: how many requests.
        text_tokens: text tokens per request (see :func:`fit_text`).
        output_len: tokens to generate per request.
        image_size: width and height of each image.
        seed: the same seed gives the same requests.

    Returns:
        The requests, as ``mmcore bench`` sends them.
    """
    rng = np.random.default_rng(seed)
    return [
        BenchRequest(
            text=fit_text(tokenizer, rng, text_tokens),
            image_urls=[random_png_data_url(rng, image_size, image_size)],
            output_len=output_len,
        )
        for _ in range(num)
    ]


def load_phase_size(rate: float, max_requests: int, max_seconds: float, min_requests: int) -> int:
    """Requests of a Poisson phase at ``rate`` req/s: about ``max_seconds`` of arrivals, at most
    ``max_requests`` and at least ``min_requests``."""
    if rate <= 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive finite req/s, got {rate}")
    return max(min_requests, min(max_requests, math.ceil(rate * max_seconds)))


def summary_dict(summary: BenchSummary) -> dict:
    """A summary as JSON-ready data (the first 5 error messages kept)."""
    data = dataclasses.asdict(summary)
    data["errors"] = data["errors"][:5]
    return data


def _tokenizer(model: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def _workload(args, tokenizer, num: int, seed: int) -> list[BenchRequest]:
    return build_requests(
        tokenizer, num, text_tokens=args.text_tokens, output_len=args.output_len,
        image_size=args.image_size, seed=seed,
    )  # fmt: skip


def run_offline_phase(args) -> dict:
    """Phase 1 (in its own process): warm-up, then ``Engine.generate`` of the workload."""
    import torch

    from mmcore import Engine
    from mmcore.bench.offline import run_offline_bench

    start = time.perf_counter()
    engine = Engine(args.model, device=args.device, seed=0, max_num_seqs=args.max_num_seqs,
                    load_format=args.load_format)  # fmt: skip
    startup_s = time.perf_counter() - start
    tokenizer = _tokenizer(args.model)  # the parent's, so both paths fit the same texts
    run_offline_bench(engine, _workload(args, tokenizer, args.warmup, SEED_WARMUP), False)
    requests = _workload(args, tokenizer, args.num_requests, SEED_MAIN)
    with _profiled(args, os.getpid(), "offline") as profile:
        summary = run_offline_bench(engine, requests, progress=False)
    cuda = torch.cuda.is_available() and args.device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "startup_s": startup_s,
        "num_blocks": engine.config.num_blocks,
        "summary": summary_dict(summary),
        **profile,
    }


def _serve(url: str, requests: list[BenchRequest], rate: float, seed: int) -> BenchSummary:
    return asyncio.run(run_serve_bench(url, requests, request_rate=rate, seed=seed, progress=False))


def run_served_phases(args, tokenizer, offline_rate: float, log) -> dict:
    """Phases 2 and 3 against one `mmcore serve` process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = ["--seed", "0", "--max-num-seqs", str(args.max_num_seqs)]
    extra += ["--load-format", args.load_format]
    extra += shlex.split(args.server_args)
    start = time.perf_counter()
    server = start_server(args.model, port, device=args.device, extra_args=extra, log=log)
    try:
        wait_healthy(url, timeout_s=600, process=server)
        result: dict = {"startup_s": time.perf_counter() - start, "server_args": extra}
        _serve(url, _workload(args, tokenizer, args.warmup, SEED_WARMUP), math.inf, 0)
        requests = _workload(args, tokenizer, args.num_requests, SEED_MAIN)
        with (
            _profiled(args, server.pid, "server_saturation") as server_profile,
            _profiled(args, os.getpid(), "client_saturation", False) as client_profile,
        ):
            saturation = _serve(url, requests, math.inf, 0)
        result["saturation"] = summary_dict(saturation)
        result["saturation_cpu_s"] = {"server": server_profile, "client": client_profile}
        served_rate = saturation.request_throughput
        result["served_over_offline"] = served_rate / offline_rate
        print(f"saturation req_per_s {served_rate:.2f}; ratio served/offline "
              f"{result['served_over_offline']:.3f}", flush=True)  # fmt: skip
        result["load"] = []
        for i, fraction in enumerate(args.load_fractions):
            rate = fraction * served_rate
            num = load_phase_size(
                rate, args.load_requests, args.load_seconds, min(args.load_requests, 20)
            )
            load_requests = _workload(args, tokenizer, num, SEED_LOAD + i)
            summary = _serve(url, load_requests, rate, seed=i)
            row = {"fraction": fraction, "offered_req_per_s": rate,
                   # achieved req/s spans the arrivals plus the last requests' generation
                   "arrival_span_s": arrival_offsets(num, rate, seed=i)[-1],
                   **summary_dict(summary)}  # fmt: skip
            result["load"].append(row)
            print(f"load {fraction:.0%}: offered {rate:.2f} req/s, achieved req_per_s "
                  f"{summary.request_throughput:.2f}, TTFT p50/p99 {_ms(summary.ttft)}, "
                  f"TPOT p50/p99 {_ms(summary.tpot)}, errors {summary.num_errors}", flush=True)  # fmt: skip
    finally:
        stop_server(server)
    return result


@contextlib.contextmanager
def _profiled(args, pid: int, name: str, descendants: bool = True):
    """CPU seconds of ``pid`` (and its descendants) over the block (filled in on exit) and, with
    ``--profile-dir``, a py-spy record of them (``DIR/NAME.txt``, raw collapsed stacks)."""
    profile: dict = {}
    before = cpu_seconds(pid, descendants)
    threads_before = {p: thread_cpu_seconds(p) for p in before}
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)
        path = os.path.join(args.profile_dir, name + ".txt")
        with SpyRecorder(pid, path, subprocesses=descendants):
            yield profile
    else:
        yield profile
    after = cpu_seconds(pid, descendants)
    profile["cpu_s"] = cpu_seconds_delta(before, after)
    profile["threads"] = {
        str(p): busiest_threads(threads_before.get(p, {}), thread_cpu_seconds(p)) for p in after
    }


def _ms(dist: dict) -> str:
    if not dist:
        return "-"
    return f"{dist['p50'] * 1e3:.1f}/{dist['p99'] * 1e3:.1f} ms"


def _offline_in_subprocess(args) -> dict:
    """Runs phase 1 as ``this script --phase offline`` and reads its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "offline.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--phase", "offline",
               "--phase-result", result_path]  # fmt: skip
        for name in _WORKLOAD_OPTIONS:
            cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
        for name in _OPTIONAL_OPTIONS:
            if getattr(args, name):
                cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
        subprocess.run(cmd, check=True)
        with open(result_path) as f:
            return json.load(f)


# Options the offline phase's process gets from the parent, and their values per mode.
_WORKLOAD_OPTIONS = ("model", "device", "load_format", "num_requests", "text_tokens",
                     "output_len", "image_size", "max_num_seqs", "warmup")  # fmt: skip
_OPTIONAL_OPTIONS = ("profile_dir",)  # passed on when set
_SMOKE = {"device": "cpu", "num_requests": 6, "text_tokens": 16, "output_len": 8,
          "image_size": 64, "load_requests": 6, "warmup": 2}  # fmt: skip
_FULL = {"device": "cuda", "num_requests": 500, "text_tokens": 64, "output_len": 128,
         "image_size": 336, "load_requests": 300, "warmup": 8}  # fmt: skip


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, a tiny LLaVA, a handful of requests (checks the script)")  # fmt: skip
    parser.add_argument("--model", help="checkpoint folder (default: a dummy llava-1.5-7b)")
    parser.add_argument("--load-format", help="dummy (default model) or auto")
    parser.add_argument("--device", help="cuda (default) or cpu (--smoke)")
    parser.add_argument("--num-requests", type=int, help="offline/saturation requests (500)")
    parser.add_argument("--text-tokens", type=int, help="text tokens per request (64)")
    parser.add_argument("--output-len", type=int, help="tokens out per request (128)")
    parser.add_argument("--image-size", type=int, help="image width = height (336)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--warmup", type=int, help="warm-up requests per engine (8)")
    parser.add_argument("--load-fractions", type=float, nargs="*", default=[0.5, 0.9])
    parser.add_argument("--load-requests", type=int, help="most requests per load phase (300)")
    parser.add_argument("--load-seconds", type=float, default=60.0,
                        help="arrival span each load phase aims at (capped by --load-requests)")  # fmt: skip
    parser.add_argument("--server-args", default="", help="more `mmcore serve` options")
    parser.add_argument("--out", default=".", help="folder of results_gpu_serving.json")
    parser.add_argument("--profile-dir", help="py-spy records of the timed offline run and of "
                        "the server and client at saturation (raw stacks; bench/spy.py sums them)")  # fmt: skip
    parser.add_argument(
        "--phase", choices=["all", "offline"], default="all", help=argparse.SUPPRESS
    )
    parser.add_argument("--phase-result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (_SMOKE if args.smoke else _FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _default_model(args) -> None:
    """A tiny LLaVA (--smoke) or a dummy LLaVA-1.5-7B folder when --model is not given."""
    if args.model is not None:
        args.load_format = args.load_format or "auto"
        return
    folder = tempfile.mkdtemp(prefix="bench_serving_")
    if args.smoke:
        from mmcore.testing.tiny_checkpoints import build_tiny_llava

        args.model = build_tiny_llava(os.path.join(folder, "tiny_llava"), seed=0)
        args.load_format = args.load_format or "auto"
    else:
        from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

        args.model = write_dummy_checkpoint("llava-1.5-7b", os.path.join(folder, "llava-1.5-7b"))
        args.load_format = args.load_format or "dummy"


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.phase == "offline":
        with open(args.phase_result, "w") as f:
            json.dump(run_offline_phase(args), f)
        return
    _default_model(args)
    os.makedirs(args.out, exist_ok=True)
    offline = _offline_in_subprocess(args)
    offline_rate = offline["summary"]["request_throughput"]
    print(f"offline req_per_s {offline_rate:.2f}", flush=True)
    tokenizer = _tokenizer(args.model)
    with open(os.path.join(args.out, "serving_server.log"), "w") as log:
        served = run_served_phases(args, tokenizer, offline_rate, log)
    same_prompts = (
        served["saturation"]["total_prompt_tokens"] == offline["summary"]["total_prompt_tokens"]
    )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": args.model,
        "load_format": args.load_format,
        "workload": {
            "num_requests": args.num_requests,
            "text_tokens": args.text_tokens,
            "image_size": args.image_size,
            "output_len": args.output_len,
            "max_num_seqs": args.max_num_seqs,
        },  # fmt: skip
        "same_prompt_tokens": same_prompts,
        "offline": offline,
        "served": served,
    }
    path = os.path.join(args.out, "results_gpu_serving.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    if not same_prompts:
        print("WARNING: offline and served prompt token totals differ", flush=True)
    print(f"offline {offline_rate:.2f} req/s, served "
          f"{served['saturation']['request_throughput']:.2f} req/s, "
          f"ratio {served['served_over_offline']:.3f} (goal >= 0.95); wrote {path}")  # fmt: skip


if __name__ == "__main__":
    main()
