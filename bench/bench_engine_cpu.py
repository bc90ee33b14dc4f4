"""CPU throughput of Engine.generate vs HF transformers' batched generate() on the same tiny
checkpoint and prompts, in one run.

    python bench/bench_engine_cpu.py --num-prompts 32 --max-tokens 32
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from mmcore.testing.tiny_checkpoints import build_tiny_llava
from PIL import Image
from skimage import data as skdata
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmcore import Engine, SamplingParams

_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def _workload(n: int):
    images = [Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in _PHOTOS]
    prompts = [
        f"USER: <image>\nQuestion number {i} about this picture?\nASSISTANT:" for i in range(n)
    ]
    return prompts, [images[i % len(images)] for i in range(n)]


def _time_hf(model_dir, prompts, images, max_tokens, batch_size) -> float:
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            inputs = processor(
                text=prompts[i : i + batch_size],
                images=images[i : i + batch_size],
                padding=True,
                return_tensors="pt",
            )
            model.generate(
                **inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False
            )
    return time.perf_counter() - start


def _time_mmcore(model_dir, prompts, images, max_tokens) -> float:
    engine = Engine(model_dir, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    batch = [{"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images)]
    engine.generate(batch[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    engine.generate(batch, params, use_tqdm=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    prompts, images = _workload(args.num_prompts)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llava(tmp, seed=0)
        hf_s = _time_hf(model_dir, prompts, images, args.max_tokens, args.hf_batch_size)
        mm_s = _time_mmcore(model_dir, prompts, images, args.max_tokens)
    tokens = args.num_prompts * args.max_tokens
    print("| engine | seconds | output tok/s | req/s |\n|---|---|---|---|")
    print(
        f"| HF generate (batch {args.hf_batch_size}) | {hf_s:.2f} | {tokens / hf_s:.0f} | {args.num_prompts / hf_s:.2f} |"
    )
    print(
        f"| mmcore Engine.generate | {mm_s:.2f} | {tokens / mm_s:.0f} | {args.num_prompts / mm_s:.2f} |"
    )
    print(f"mmcore / HF throughput: {hf_s / mm_s:.2f}x")


if __name__ == "__main__":
    main()
