"""Transformers backend vs native mmcore vs HF generate() on one GPU, same requests, one run.

Model: LLaVA-1.5-7B with random fp16 weights (``load_format="dummy"`` over
:func:`mmcore.testing.dummy_checkpoint.write_dummy_checkpoint`). Each request: one distinct
random 336x336 image + 64 text tokens, 128 output tokens (ignore_eos). The three systems run
one after the other in this process (each frees the GPU before the next); HF generate() runs in
batches of ``--hf-batch-size`` over the first ``--hf-requests`` requests.

Goal of the issue: backend >= 70% of native output tokens/s, and >= 3x HF.

Usage: python bench/bench_gpu_transformers_backend.py --num-requests 1000 --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

BOS, IMAGE_TOKEN = 1, 32000


def make_requests(num: int, text_tokens: int, image_size: int, seed: int) -> list[dict]:
    """``num`` prompts: BOS + one image placeholder + ``text_tokens - 1`` random text ids."""
    rng = np.random.default_rng(seed)
    return [
        {
            "prompt_token_ids": [BOS, IMAGE_TOKEN]
            + rng.integers(3, IMAGE_TOKEN, text_tokens - 1).tolist(),
            "multi_modal_data": {
                "image": [Image.fromarray(rng.integers(0, 256, (image_size,) * 2 + (3,), np.uint8))]
            },
        }
        for _ in range(num)
    ]


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def run_engine(model_dir: str, model_impl: str, requests: list[dict], args) -> dict:
    """Output tokens/s of one Engine over all requests (one warm-up request first)."""
    started = time.perf_counter()
    engine = Engine(
        model_dir,
        load_format="dummy",
        model_impl=model_impl,
        enforce_eager=args.enforce_eager,
        max_num_seqs=args.max_num_seqs,
    )
    load_s = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    engine.generate(requests[:1], params, use_tqdm=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = engine.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    result = {
        "model_impl": model_impl,
        "model_class": type(engine.model).__name__,
        "cuda_graphs": engine.runner.decode_graphs is not None,
        "load_s": load_s,
        "seconds": elapsed,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / elapsed,
        "requests_per_s": len(requests) / elapsed,
    }
    del engine, outputs
    _free()
    return result


def run_hf(model_dir: str, requests: list[dict], args) -> dict:
    """HF generate() in batches over the same prompts (its processor expands the image)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from mmcore.model_loader import init_dummy_weights
    from mmcore.models.transformers_backend.loader import build_from_config

    config = AutoConfig.from_pretrained(model_dir)
    model = build_from_config(AutoModelForImageTextToText, config, torch.float16, "cuda").eval()
    init_dummy_weights(model, seed=0)
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    chosen = requests[: args.hf_requests]
    texts = [processor.tokenizer.decode(r["prompt_token_ids"]) for r in chosen]
    images = [r["multi_modal_data"]["image"][0] for r in chosen]
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(chosen), args.hf_batch_size):
            inputs = processor(
                text=texts[i : i + args.hf_batch_size],
                images=images[i : i + args.hf_batch_size],
                padding=True,
                return_tensors="pt",
                add_special_tokens=False,
            ).to("cuda", torch.float16)
            out = model.generate(
                **inputs,
                max_new_tokens=args.max_tokens,
                min_new_tokens=args.max_tokens,
                do_sample=False,
            )
            tokens += (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del model
    _free()
    return {
        "model_impl": "hf_generate",
        "requests": len(chosen),
        "batch_size": args.hf_batch_size,
        "seconds": elapsed,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-1.5-7b", help="a REAL_CONFIGS name")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--hf-requests", type=int, default=1000)
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    requests = make_requests(args.num_requests, args.text_tokens, args.image_size, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_dummy_checkpoint(args.model, tmp)
        results = {"args": vars(args), "device": torch.cuda.get_device_name()}
        results["native"] = run_engine(model_dir, "mmcore", requests, args)
        results["transformers"] = run_engine(model_dir, "transformers", requests, args)
        if not args.skip_hf:
            results["hf"] = run_hf(model_dir, requests, args)
    native = results["native"]["output_tokens_per_s"]
    backend = results["transformers"]["output_tokens_per_s"]
    results["backend_vs_native"] = backend / native
    if "hf" in results:
        results["backend_vs_hf"] = backend / results["hf"]["output_tokens_per_s"]
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
