"""InternVL3-8B on a GPU: offline image throughput vs HF generate() and the roofline, and
batch-1 inter-token latency vs its bound.

Model: InternVL3-8B's architecture (InternViT-300M, 448 px tiles, pixel shuffle, Qwen2.5-7B)
with random bf16 weights (``load_format="dummy"`` over
:func:`mmcore.testing.dummy_checkpoint.write_dummy_checkpoint`; HF's model is built from the
same config on the GPU).

Stages (``--stage``):
  images   ``--num-requests`` requests, one random image each of 448x448 / 896x448 / 448x896 /
           672x448 (1, 3, 3 and 7 tiles with the thumbnail: 256..1792 image tokens) + 64 text
           tokens, 128 output tokens: req/s of mmcore, of HF generate() at its best batch size,
           and the roofline measured in the run.
  latency  batch 1: TTFT and ITL (medians of 5 requests, one 448x448 image + 64 text tokens,
           64 output tokens) against the ITL bound (LM weight bytes + KV bytes of the context,
           over the copy bandwidth measured here).

Usage: python bench/bench_gpu_internvl.py --stage images --out DIR   (one JSON per stage)
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

from bench_gpu_offline import _latency as batch1_latency  # the script folder is on sys.path
from bench_gpu_offline import (
    hf_batch_sweep,
    measure_machine,
    model_shapes,
    roofline,
    write_stage_result,
)
from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

MODEL = "internvl3-8b"
IMG_START, IMG_END, IMG_CONTEXT, PAD = 151665, 151666, 151667, 151643
TEXT_IDS = (0, PAD)  # random prompt text: ids below the special tokens
IMAGE_SIZES = [(448, 448), (896, 448), (448, 896), (672, 448)]  # (width, height)
TILE_TOKENS, VIT_TOKENS_PER_TILE = 256, 1025


def _smooth(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random image with photo-like smoothness (noise upsampled 8x), uint8 HxWx3."""
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]


def image_requests(num: int, text_len: int, seed: int, sizes=IMAGE_SIZES) -> list[dict]:
    """Prompts ``<IMG_CONTEXT>`` + ``text_len`` random text ids, one image each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        width, height = sizes[i % len(sizes)]
        ids = [IMG_CONTEXT] + rng.integers(*TEXT_IDS, text_len).tolist()
        image = Image.fromarray(_smooth(rng, height, width))
        out.append({"prompt_token_ids": ids, "multi_modal_data": {"image": image}})
    return out


def _engine(path: str, args) -> Engine:
    return Engine(
        path,
        load_format="dummy",
        device="cuda",
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        limit_mm_per_prompt={"image": 1, "video": 0},
    )


def hf_images(path: str, args) -> list[dict]:
    """HF generate() on batches of the same kind of requests (left padding), per batch size."""
    from transformers import AutoConfig, AutoImageProcessor, InternVLForConditionalGeneration

    config = AutoConfig.from_pretrained(path)
    with torch.device("cuda"):
        model = InternVLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    image_processor = AutoImageProcessor.from_pretrained(path)

    def run(batch: list[dict], new_tokens: int) -> None:
        images = [r["multi_modal_data"]["image"] for r in batch]
        pixels = image_processor(images=images, crop_to_patches=True, return_tensors="pt")
        rows = [
            [IMG_START] + [IMG_CONTEXT] * (TILE_TOKENS * n) + [IMG_END] + r["prompt_token_ids"][1:]
            for r, n in zip(batch, pixels["num_patches"].tolist())
        ]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows], device="cuda")
        mask = (torch.arange(width, device="cuda")[None] >= torch.tensor(
            [width - len(r) for r in rows], device="cuda")[:, None]).long()  # fmt: skip
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask,
                pixel_values=pixels["pixel_values"].to("cuda", torch.bfloat16),
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            )  # fmt: skip
        assert out.shape[1] == width + new_tokens

    return hf_batch_sweep(
        run,
        lambda n, seed: image_requests(n, args.text_len, seed),
        args.hf_batch_sizes,
        args.output_len,
    )


def _vit_shapes(engine: Engine, shapes: dict) -> dict:
    """``shapes`` with only InternViT's parameters as vision parameters: they run on 1025
    tokens per tile (the projector's on 256; left out, so the bound stays a lower bound)."""
    tower = sum(p.numel() for p in engine.model.vision_tower.parameters())
    return {**shapes, "vision_params": tower}


def stage_images(path: str, args) -> dict:
    machine = measure_machine()
    print("machine", machine, flush=True)
    engine = _engine(path, args)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    engine.generate(image_requests(8, args.text_len, 1), params, use_tqdm=False)
    requests = image_requests(args.num_requests, args.text_len, 2)
    processed = [engine.inputs.process(r) for r in requests[: len(IMAGE_SIZES)]]
    image_tokens = float(np.mean([p.items[0].num_embeds for p in processed]))
    start = time.perf_counter()
    outputs = engine.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == args.output_len for o in outputs)
    ours = {"elapsed_s": elapsed, "req_per_s": len(requests) / elapsed, **engine.stats()}
    print("mmcore", ours, flush=True)
    shapes = model_shapes(engine)
    prompt_len = int(2 + args.text_len + image_tokens)
    concurrent = min(
        args.max_num_seqs,
        engine.config.num_blocks * engine.config.block_size // (prompt_len + args.output_len),
    )
    tiles = image_tokens / TILE_TOKENS
    # ViT attention FLOPs left out (vit_layers=0): a lower bound on its time.
    bound = roofline(
        _vit_shapes(engine, shapes), machine, num_requests=len(requests), prompt_len=prompt_len,
        out_len=args.output_len, vit_tokens=int(tiles * VIT_TOKENS_PER_TILE), vit_layers=0,
        vit_hidden=1024, batch=concurrent, hidden=shapes["hidden"],
    )  # fmt: skip
    del engine
    gc.collect()  # the engine's KV cache and graphs sit in reference cycles
    torch.cuda.empty_cache()
    result = {"mmcore": ours, "roofline": bound, "shapes": shapes, "machine": machine,
              "mean_image_tokens": image_tokens, "concurrent_requests": concurrent}  # fmt: skip
    result["fraction_of_roofline"] = ours["req_per_s"] / bound["req_per_s_bound"]
    try:
        result["hf"] = hf_images(path, args)
        best = max((r["req_per_s"] for r in result["hf"] if "req_per_s" in r), default=None)
        result["speedup_vs_best_hf"] = ours["req_per_s"] / best if best else None
    except Exception as exc:  # keep mmcore's numbers when the baseline fails
        result["hf_error"] = repr(exc)
    return result


def stage_latency(path: str, args) -> dict:
    machine = measure_machine()
    engine = _engine(path, args)
    params = SamplingParams(temperature=0.0, max_tokens=args.latency_output_len, ignore_eos=True)
    single = [(448, 448)]
    engine.generate(image_requests(2, args.text_len, 19, single), params, use_tqdm=False)
    medians = batch1_latency(engine, image_requests(5, args.text_len, 20, single), params)
    shapes = model_shapes(engine)
    context = 1 + args.text_len + TILE_TOKENS + 2 + args.latency_output_len / 2
    bound_s = (shapes["lm_weight_bytes"] + context * shapes["kv_bytes_per_token"]) / machine[
        "copy_bytes_per_s"
    ]
    return {
        "ttft_ms": medians["ttft_s"] * 1e3,
        "itl_ms": medians["itl_s"] * 1e3,
        "itl_bound_ms": bound_s * 1e3,
        "itl_over_bound": medians["itl_s"] / bound_s,
        "shapes": shapes,
        "machine": machine,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=["images", "latency"], required=True)
    parser.add_argument("--num-requests", type=int, default=400)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--latency-output-len", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--out", default=".")
    parser.add_argument(
        "--dry-run", action="store_true", help="parse, write the checkpoint folder, stop"
    )
    args = parser.parse_args(argv)
    path = write_dummy_checkpoint(MODEL, os.path.join(tempfile.mkdtemp(), MODEL))
    if args.dry_run:
        print(json.dumps({"checkpoint": path, "args": vars(args)}))
        return
    run = {"images": stage_images, "latency": stage_latency}[args.stage]
    write_stage_result("bench_gpu_internvl", MODEL, args, run(path, args))


if __name__ == "__main__":
    main()
