"""Image-heavy offline throughput on a GPU: LLaVA-NeXT-7B, four anyres images per request.

Model: the LLaVA-NeXT-Vicuna-7B architecture with random bf16 weights. Four anyres images of
mixed sizes expand to ~7-9k tokens, more than Vicuna's 4096 positions, so the dummy checkpoint's
``max_position_embeddings`` is raised to ``--max-model-len`` (plain RoPE: only the length limit
changes; the weights are random anyway).

Workloads (each request: 4 images + 32 text tokens, ``--output-len`` tokens, ignore_eos):
  distinct:  every image different (sizes cycle through a mixed list);
  repeated:  the same 4 images in every request, then distinct text: the encoder cache and the
             prefix cache (the images come first) should serve all but the first request.
Reported: req/s, output tok/s, and the engine's encoder-cache and prefix-cache hit rates.

Usage: python bench/bench_gpu_images.py --num-requests 64 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

BOS, IMAGE_TOKEN = 1, 32000
# (height, width): square, wide, tall and small, so anyres picks different grids.
SIZES = [(336, 336), (480, 640), (800, 400), (224, 300), (672, 672), (300, 900)]


def _image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    coarse = rng.integers(0, 256, (size[0] // 16 + 1, size[1] // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size[1], size[0]), Image.BILINEAR)


def make_requests(num: int, repeated: bool, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    shared = [_image(rng, SIZES[i]) for i in range(4)]
    requests = []
    for r in range(num):
        images = (
            shared if repeated else [_image(rng, SIZES[(r + i) % len(SIZES)]) for i in range(4)]
        )
        text = rng.integers(3, IMAGE_TOKEN, 32).tolist()
        requests.append(
            {
                "prompt_token_ids": [BOS] + [IMAGE_TOKEN] * 4 + text,
                "multi_modal_data": {"image": images},
            }
        )
    return requests


def _rate(hits: int, queries: int) -> float | None:
    return hits / queries if queries else None


def run(engine: Engine, requests: list[dict], output_len: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    before = engine.stats()
    start = time.perf_counter()
    outputs = engine.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    after = engine.stats()
    delta = {k: after[k] - before[k] for k in after if isinstance(after[k], int) and k in before}
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    return {
        "num_requests": len(requests),
        "elapsed_s": elapsed,
        "req_per_s": len(requests) / elapsed,
        "out_tok_per_s": len(requests) * output_len / elapsed,
        "prompt_tok_per_s": prompt_tokens / elapsed,
        "mean_prompt_tokens": prompt_tokens / len(requests),
        "encoder_hit_rate": _rate(delta["encoder_hits"], delta["encoder_queries"]),
        "prefix_hit_rate": _rate(delta["prefix_hits"], delta["prefix_queries"]),
        "encoder_runs": delta["encoder_runs"],
        "counters": {
            k: delta[k]
            for k in (
                "encoder_hits",
                "encoder_queries",
                "prefix_hits",
                "prefix_queries",
                "num_preemptions",
                "overlapped_steps",
                "cuda_graph_steps",
            )
            if k in delta
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=16384)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()

    path = write_dummy_checkpoint(
        "llava-next-vicuna-7b", os.path.join(tempfile.mkdtemp(), "llava-next-7b")
    )
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["text_config"]["max_position_embeddings"] = args.max_model_len
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    start = time.perf_counter()
    engine = Engine(
        path,
        load_format="dummy",
        device="cuda",
        max_model_len=args.max_model_len,
        limit_mm_per_prompt={"image": 4},
    )
    result = {
        "device": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": "llava-next-vicuna-7b (max_position_embeddings raised)",
        "startup_s": time.perf_counter() - start,
        "num_blocks": engine.config.num_blocks,
        "async_scheduling": engine.async_scheduling,
        "sizes": SIZES,
    }
    run(engine, make_requests(4, False, seed=1), 8)  # warm-up
    for name, repeated, seed in (("distinct", False, 10), ("repeated", True, 20)):
        result[name] = run(
            engine, make_requests(args.num_requests, repeated, seed), args.output_len
        )
        print("images", name, json.dumps(result[name]), flush=True)
        with open(os.path.join(args.out, "bench_gpu_images.json"), "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
