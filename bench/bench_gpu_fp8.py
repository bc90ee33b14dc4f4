"""FP8 weights (and FP8 KV) vs bf16 on a GPU, same run: offline throughput, batch-1 ITL, KL,
demo accuracy.

Model: LLaVA-1.5-7B with random bf16 weights (``load_format="dummy"``); the FP8 engines
quantise the same seeded weights online (``quantization="fp8"``; ``--quantize-vision`` also
the CLIP tower and projector), the third also stores K/V as e4m3 (``kv_cache_dtype="fp8"``,
issue 18's end-to-end configuration). Engines run one after the other (one GPU). Per engine:

* offline: ``--num-requests`` requests of one random 336x336 image + ``--text-len`` text tokens,
  ``--output-len`` output tokens (ignore_eos), req/s and output tok/s;
* batch 1: median TTFT and inter-token latency of 5 requests;
* next-token distributions at >= ``--kl-positions`` prompt positions (logits captured from
  ``compute_logits`` while the engine computes prompt log-probabilities): KL(bf16 || fp8),
  mean and 99th percentile, and greedy next-token agreement;
* the trained demo model (python/mmcore/demo, shipped checkpoint): held-out accuracy per
  question type, bf16 vs FP8 weights (LM + vision), ``--demo-n`` questions per set.

Usage (GPU): python bench/bench_gpu_fp8.py --out DIR
Smoke run of the same code on CPU with a tiny LLaVA: python bench/bench_gpu_fp8.py --smoke
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
from PIL import Image

from mmcore import Engine, SamplingParams

KL_PROMPT_LOGPROBS = 1  # any value makes the engine compute logits at every prompt position


def make_requests(num, text_len, image_size, image_token, vocab, seed) -> list[dict]:
    """``num`` prompts: BOS + one image placeholder + ``text_len - 1`` random text ids."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(num):
        pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        ids = [1, image_token] + rng.integers(5, vocab, text_len - 1).tolist()
        requests.append(
            {"prompt_token_ids": ids, "multi_modal_data": {"image": [Image.fromarray(pixels)]}}
        )
    return requests


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def offline(engine, requests, output_len, device) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    _sync(device)
    start = time.perf_counter()
    outputs = engine.generate(requests, params, use_tqdm=False)
    _sync(device)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == output_len for o in outputs)
    return {
        "num_requests": len(requests),
        "elapsed_s": elapsed,
        "req_per_s": len(requests) / elapsed,
        "out_tok_per_s": len(requests) * output_len / elapsed,
    }


def batch1_latency(engine, requests, output_len) -> dict:
    """Median TTFT (from add_request) and median inter-token latency, one request at a time."""
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    ttfts, itls = [], []
    for i, request in enumerate(requests):
        start = time.perf_counter()
        engine.add_request(f"latency-{i}", request, params)
        stamps = []
        while engine.has_unfinished_requests():
            if engine.step():
                stamps.append(time.perf_counter())
        ttfts.append(stamps[0] - start)
        itls.append(float(np.median(np.diff(stamps))))
    return {"ttft_ms": 1e3 * float(np.median(ttfts)), "itl_ms": 1e3 * float(np.median(itls))}


def next_token_logprobs(engine, requests) -> torch.Tensor:
    """float32 log-probabilities ``[positions, vocab]`` (CPU) at every prompt position of
    ``requests`` and at their first generated token, in the engine's computation order."""
    captured = []
    compute_logits = engine.config.model.compute_logits

    def capture(hidden):
        logits = compute_logits(hidden)
        captured.append(logits.float().log_softmax(-1).cpu())
        return logits

    engine.config.model.compute_logits = capture
    try:
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=KL_PROMPT_LOGPROBS)
        engine.generate(requests, params, use_tqdm=False)
    finally:
        engine.config.model.compute_logits = compute_logits
    return torch.cat(captured)


def kl_report(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """KL(reference || other) per position (nats): mean, p99, max; greedy agreement."""
    if reference.shape != other.shape:
        raise ValueError(f"positions differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    kl = (reference.exp() * (reference - other)).sum(-1)
    return {
        "positions": int(kl.numel()),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(kl.quantile(0.99)),
        "kl_max": float(kl.max()),
        "greedy_agreement": float((reference.argmax(-1) == other.argmax(-1)).float().mean()),
    }


def demo_accuracy(device: str, n: int, options: dict) -> dict:
    """Held-out accuracy of the shipped demo model through the Engine, per question set."""
    import mmcore.demo
    from mmcore.demo import evaluate

    model_dir = mmcore.demo.default_model_path()
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    engine = Engine(str(model_dir), device=device, dtype=dtype, seed=0, **options)

    def generate(_model_dir, images, questions):
        conversations = [
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": im}, {"type": "text", "text": q}],
                }
            ]
            for im, q in zip(images, questions)
        ]
        params = SamplingParams(temperature=0.0, max_tokens=32)
        return [
            o.outputs[0].text.strip() for o in engine.chat(conversations, params, use_tqdm=False)
        ]

    result = {}
    for dataset in ("first_demo", "held_out"):
        report = evaluate.evaluate(
            model_dir, n=n, seed=20261127, generate_fn=generate, dataset=dataset
        )
        result[dataset] = {
            "accuracy": {q: round(a, 4) for q, a in report.accuracy.items()},
            "overall": sum(report.correct.values()) / sum(report.total.values()),
        }
    engine.shutdown()
    return result


def run_engine(
    path: str, args, options: dict, image_token: int, vocab: int
) -> tuple[dict, torch.Tensor]:
    start = time.perf_counter()
    engine = Engine(path, load_format="dummy", device=args.device, dtype=args.dtype, seed=0,
                    max_num_seqs=args.max_num_seqs, **options)  # fmt: skip
    row = {"options": options, "startup_s": time.perf_counter() - start}
    weights = engine.config.model.parameters()
    row["weight_bytes"] = sum(p.numel() * p.element_size() for p in weights)

    def requests(num, seed, text_len=args.text_len):
        return make_requests(num, text_len, args.image_size, image_token, vocab, seed)

    offline(engine, requests(4, seed=1), args.output_len, args.device)  # warm-up
    row["offline"] = offline(
        engine, requests(args.num_requests, seed=2), args.output_len, args.device
    )
    row["batch1"] = batch1_latency(engine, requests(5, seed=3), args.output_len)
    per_request = args.text_len + args.image_tokens
    num_kl = -(-args.kl_positions // per_request)
    logprobs = next_token_logprobs(engine, requests(num_kl, seed=4))
    print("fp8 bench", json.dumps(row), flush=True)
    engine.shutdown()
    del engine
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row, logprobs


def _smoke_args(args) -> None:
    from mmcore.testing.tiny_checkpoints import build_tiny_llava

    args.path = build_tiny_llava(os.path.join(tempfile.mkdtemp(), "tiny-llava"), seed=0)
    args.device, args.dtype = "cpu", "float32"
    args.num_requests, args.output_len, args.text_len = 8, 8, 24
    args.image_size, args.image_tokens, args.kl_positions, args.demo_n = 32, 16, 100, 10


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llava-1.5-7b", help="architecture of the dummy weights")
    parser.add_argument("--out", default=".", help="folder of bench_gpu_fp8.json")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--kl-positions", type=int, default=1000)
    parser.add_argument("--demo-n", type=int, default=500, help="demo questions per set (0: skip)")
    parser.add_argument("--quantize-vision", action="store_true", help="FP8 CLIP + projector too")
    parser.add_argument("--smoke", action="store_true", help="tiny LLaVA on CPU, a few requests")
    args = parser.parse_args(argv)
    args.device, args.dtype, args.image_size, args.image_tokens = "cuda", "bfloat16", 336, 576
    if args.smoke:
        _smoke_args(args)
    else:
        from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

        args.path = write_dummy_checkpoint(args.model, os.path.join(tempfile.mkdtemp(), args.model))
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.path)
    image_token, vocab = config.image_token_index, min(config.text_config.vocab_size, 32000)
    fp8_options = {"quantization": "fp8", "quantize_vision": args.quantize_vision}
    fp8_kv_options = {**fp8_options, "kv_cache_dtype": "fp8"}
    base, base_lp = run_engine(args.path, args, {}, image_token, vocab)
    fp8, fp8_lp = run_engine(args.path, args, fp8_options, image_token, vocab)
    fp8_kv, fp8_kv_lp = run_engine(args.path, args, fp8_kv_options, image_token, vocab)
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": "tiny-llava (smoke)" if args.smoke else args.model,
        "bf16": base,
        "fp8": fp8,
        "fp8_kv": fp8_kv,
        "speedup": {
            "req_per_s": fp8["offline"]["req_per_s"] / base["offline"]["req_per_s"],
            "itl": fp8["batch1"]["itl_ms"] / base["batch1"]["itl_ms"],
        },
        "speedup_fp8_kv": {
            "req_per_s": fp8_kv["offline"]["req_per_s"] / base["offline"]["req_per_s"],
            "itl": fp8_kv["batch1"]["itl_ms"] / base["batch1"]["itl_ms"],
        },
        "kl_bf16_fp8": kl_report(base_lp, fp8_lp),
        "kl_bf16_fp8_kv": kl_report(base_lp, fp8_kv_lp),
    }
    if args.demo_n:
        result["demo"] = {
            "bf16": demo_accuracy(args.device, args.demo_n, {}),
            "fp8": demo_accuracy(
                args.device, args.demo_n, {"quantization": "fp8", "quantize_vision": True}
            ),
            "fp8_kv": demo_accuracy(
                args.device,
                args.demo_n,
                {"quantization": "fp8", "quantize_vision": True, "kv_cache_dtype": "fp8"},
            ),
        }
    keys = ("speedup", "speedup_fp8_kv", "kl_bf16_fp8", "kl_bf16_fp8_kv")
    print("fp8 result", json.dumps({k: result[k] for k in keys}), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_gpu_fp8.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
