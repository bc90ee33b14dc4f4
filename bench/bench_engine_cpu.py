"""CPU throughput of Engine.generate vs HF transformers' batched generate() on the same tiny
checkpoint and prompts, in one run.

    python bench/bench_engine_cpu.py --num-prompts 32 --max-tokens 32
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from PIL import Image
from skimage import data as skdata
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmcore import Engine, SamplingParams
from mmcore.testing.tiny_checkpoints import build_tiny_llava

_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def _workload(n: int):
    images = [Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in _PHOTOS]
    prompts = [
        f"USER: <image>\nQuestion number {i} about this picture?\nASSISTANT:" for i in range(n)
    ]
    return prompts, [images[i % len(images)] for i in range(n)]


def _hf_runner(model_dir):
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    return model, processor


def _time_hf(hf, prompts, images, max_tokens, batch_size) -> float:
    model, processor = hf
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


def _time_mmcore(engine, prompts, images, max_tokens) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    batch = [{"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images)]
    start = time.perf_counter()
    engine.generate(batch, params, use_tqdm=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs; best is kept")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    prompts, images = _workload(args.num_prompts)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llava(tmp, seed=0)
        hf = _hf_runner(model_dir)
        engine = Engine(model_dir, seed=0, enable_prefix_caching=False)
        _time_hf(hf, prompts[:2], images[:2], 2, 2)  # warm-up both
        _time_mmcore(engine, prompts[:2], images[:2], 2)
        hf_s = mm_s = float("inf")
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
            hf_s = min(hf_s, _time_hf(hf, prompts, images, args.max_tokens, args.hf_batch_size))
            mm_s = min(mm_s, _time_mmcore(engine, prompts, images, args.max_tokens))
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
