"""Qwen2.5-VL on a GPU: image and video serving throughput vs HF generate() and the roofline,
and the packed window-attention ViT vs torch SDPA looped per window.

Model: Qwen2.5-VL-7B-Instruct's architecture with random bf16 weights (``load_format="dummy"``
over :func:`mmcore.testing.dummy_checkpoint.write_dummy_checkpoint`; HF's model built from the
same config on the GPU).

Stages (``--stage``):
  images  500 requests, one random image each of mixed sizes (448x448 ... 1280x720) + 64 text
          tokens, 128 output tokens: req/s of mmcore, of HF generate() at its best batch size,
          and the roofline measured in the run (goal: >= 4x HF, >= 60% of the roofline).
  video   100 requests with a 32-frame 448x448 clip each: req/s, TTFT (under load and batch 1),
          the ViT's share of the run's wall time.
  vit     the vision tower alone on 8 images of 1280x720 and on a 32-frame clip: packed varlen
          attention (one call per block over all windows) vs torch SDPA called per window.

Usage: python bench/bench_gpu_qwen2_vl.py --stage images --out DIR   (one JSON per stage)
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

import numpy as np
import torch

from bench_gpu_offline import (  # script folder on sys.path
    hf_batch_sweep,
    measure_machine,
    model_shapes,
    roofline,
    write_stage_result,
)
from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

MODEL = "qwen2.5-vl-7b-instruct"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, PAD = 151652, 151653, 151655, 151656, 151643
TEXT_IDS = (0, PAD)  # random prompt text: ids below Qwen's special tokens
IMAGE_SIZES = [(448, 448), (640, 480), (800, 600), (1024, 768), (1280, 720)]  # (width, height)


def _smooth(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random image with photo-like smoothness (noise upsampled 8x), uint8 HxWx3."""
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]


def image_requests(num: int, text_len: int, seed: int) -> list[dict]:
    """Prompts ``<vision_start><image_pad><vision_end>`` + ``text_len`` random text ids."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        width, height = IMAGE_SIZES[i % len(IMAGE_SIZES)]
        ids = [VISION_START, IMAGE_PAD, VISION_END] + rng.integers(*TEXT_IDS, text_len).tolist()
        image = Image.fromarray(_smooth(rng, height, width))
        out.append({"prompt_token_ids": ids, "multi_modal_data": {"image": image}})
    return out


def video_requests(num: int, frames: int, side: int, text_len: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        base = _smooth(rng, side, side).astype(np.int16)
        drift = rng.integers(-3, 4, (frames, 1, 1, 3)).cumsum(0)
        clip = np.clip(base[None] + drift, 0, 255).astype(np.uint8)
        ids = [VISION_START, VIDEO_PAD, VISION_END] + rng.integers(*TEXT_IDS, text_len).tolist()
        out.append({"prompt_token_ids": ids, "multi_modal_data": {"video": clip}})
    return out


def _engine(path: str, args, limits: dict) -> Engine:
    return Engine(
        path,
        load_format="dummy",
        device="cuda",
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        limit_mm_per_prompt=limits,
    )


class EncoderTimer:
    """GPU time of the model's encode() calls (CUDA events, synchronised per call)."""

    def __init__(self, model) -> None:
        self.seconds, self.calls, self._model, self._encode = 0.0, 0, model, model.encode
        model.encode = self._timed

    def _timed(self, modality, items):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = self._encode(modality, items)
        end.record()
        end.synchronize()
        self.seconds += start.elapsed_time(end) / 1e3
        self.calls += 1
        return result

    def close(self) -> None:
        self._model.encode = self._encode


def run_with_ttft(engine: Engine, prompts: list, params: SamplingParams) -> dict:
    """All prompts at once; per request the time from submission to its first token."""
    start = time.perf_counter()
    processed = engine._process_all(prompts)
    ids = [f"r{i}-{time.monotonic_ns()}" for i in range(len(prompts))]
    for request_id, proc in zip(ids, processed):
        engine.add_processed(request_id, proc, params)
    first: dict[str, float] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id not in first and out.outputs[0].token_ids:
                first[out.request_id] = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    ttft = np.array([first[i] for i in ids])
    return {
        "num_requests": len(prompts),
        "elapsed_s": elapsed,
        "req_per_s": len(prompts) / elapsed,
        "ttft_median_s": float(np.median(ttft)),
        "ttft_p90_s": float(np.percentile(ttft, 90)),
    }


def hf_images(path: str, args) -> list[dict]:
    """HF generate() on batches of the same kind of requests (left padding), per batch size."""
    from transformers import AutoConfig, AutoImageProcessor, Qwen2_5_VLForConditionalGeneration

    config = AutoConfig.from_pretrained(path)
    with torch.device("cuda"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    image_processor = AutoImageProcessor.from_pretrained(path)

    def run(batch: list[dict], new_tokens: int) -> None:
        images = [r["multi_modal_data"]["image"] for r in batch]
        pixels = image_processor(images=images, return_tensors="pt")
        counts = (pixels["image_grid_thw"].prod(-1) // 4).tolist()
        rows = [
            r["prompt_token_ids"][:1] + [IMAGE_PAD] * n + r["prompt_token_ids"][2:]
            for r, n in zip(batch, counts)
        ]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows], device="cuda")
        mask = (torch.arange(width, device="cuda")[None] >= torch.tensor(
            [width - len(r) for r in rows], device="cuda")[:, None]).long()  # fmt: skip
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask,
                mm_token_type_ids=(ids == IMAGE_PAD).int(),
                pixel_values=pixels["pixel_values"].to("cuda", torch.bfloat16),
                image_grid_thw=pixels["image_grid_thw"].to("cuda"),
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            )  # fmt: skip
        assert out.shape[1] == width + new_tokens

    return hf_batch_sweep(
        run,
        lambda n, seed: image_requests(n, args.text_len, seed),
        args.hf_batch_sizes,
        args.output_len,
    )


def stage_images(path: str, args) -> dict:
    machine = measure_machine()
    print("machine", machine, flush=True)
    engine = _engine(path, args, {"image": 1, "video": 0})
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    engine.generate(image_requests(8, args.text_len, 1), params, use_tqdm=False)
    requests = image_requests(args.num_requests, args.text_len, 2)
    processed = [engine.inputs.process(r) for r in requests[: len(IMAGE_SIZES)]]
    image_tokens = np.mean([p.items[0].num_embeds for p in processed])
    start = time.perf_counter()
    outputs = engine.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == args.output_len for o in outputs)
    ours = {"elapsed_s": elapsed, "req_per_s": len(requests) / elapsed, **engine.stats()}
    print("mmcore", ours, flush=True)
    if args.profile_dir:  # where a step's device time goes, on a slice of the same workload
        os.environ["MMCORE_TORCH_PROFILER_DIR"] = os.path.join(args.profile_dir, "images")
        engine.start_profile()
        engine.generate(image_requests(args.profile_requests, args.text_len, 4), params,
                        use_tqdm=False)  # fmt: skip
        engine.stop_profile()
    shapes = model_shapes(engine)
    prompt_len = int(3 + args.text_len + image_tokens - 1)
    concurrent = min(
        args.max_num_seqs,
        engine.config.num_blocks * engine.config.block_size // (prompt_len + args.output_len),
    )
    # ViT attention FLOPs only for its 4 full-attention blocks: a lower bound on its time.
    bound = roofline(
        shapes, machine, num_requests=len(requests), prompt_len=prompt_len,
        out_len=args.output_len, vit_tokens=int(4 * image_tokens), vit_layers=4,
        vit_hidden=1280, batch=concurrent, hidden=shapes["hidden"],
    )  # fmt: skip
    del engine
    gc.collect()  # the engine's KV cache and graphs sit in reference cycles
    torch.cuda.empty_cache()
    result = {"mmcore": ours, "roofline": bound, "shapes": shapes, "machine": machine,
              "mean_image_tokens": float(image_tokens), "concurrent_requests": concurrent}  # fmt: skip
    result["fraction_of_roofline"] = ours["req_per_s"] / bound["req_per_s_bound"]
    try:
        result["hf"] = hf_images(path, args)
        best = max((r["req_per_s"] for r in result["hf"] if "req_per_s" in r), default=None)
        result["speedup_vs_best_hf"] = ours["req_per_s"] / best if best else None
    except Exception as exc:  # keep mmcore's numbers when the baseline fails
        result["hf_error"] = repr(exc)
    return result


def stage_video(path: str, args) -> dict:
    engine = _engine(path, args, {"image": 0, "video": 1})
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    engine.generate(
        video_requests(2, args.frames, args.side, args.text_len, 1), params, use_tqdm=False
    )
    single = run_with_ttft(
        engine, video_requests(1, args.frames, args.side, args.text_len, 2), params
    )
    requests = video_requests(args.num_videos, args.frames, args.side, args.text_len, 3)
    timer = EncoderTimer(engine.model)
    loaded = run_with_ttft(engine, requests, params)
    timer.close()
    loaded["vit_s"] = timer.seconds
    loaded["vit_share_of_wall"] = timer.seconds / loaded["elapsed_s"]
    loaded["encoder_calls"] = timer.calls
    loaded["video_tokens"] = engine.inputs.process(requests[0]).items[0].num_embeds
    print("mmcore video", loaded, flush=True)
    return {"batch1": single, "loaded": loaded, "stats": engine.stats()}


def _sdpa_per_window(query, key, value, cu_seqlens, scale):
    """torch SDPA called once per window / frame (HF's non-flash path)."""
    out = torch.empty_like(query)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
        res = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
        out[start:end] = res[0].transpose(0, 1)
    return out


def stage_vit(path: str, args) -> dict:
    from transformers import AutoConfig

    from mmcore.model_loader import after_weights_loaded, init_dummy_weights
    from mmcore.models.qwen2_vl import vision

    config = AutoConfig.from_pretrained(path).vision_config
    tower = vision.Qwen2VisionTower(config, dtype=torch.bfloat16, device=torch.device("cuda"))
    init_dummy_weights(tower)
    after_weights_loaded(tower)  # as the engine's loader does (MLP width padded for the GEMMs)
    cases = {"images_8x1280x720": [(1, 52, 92)] * 8, "video_32x448x448": [(16, 32, 32)]}
    result = {}
    packed_attention = vision.varlen_attention
    for name, grids in cases.items():
        patches = sum(t * h * w for t, h, w in grids)
        pixels = torch.randn(patches, tower.patch_dim, device="cuda", dtype=torch.bfloat16)
        row = {"patches": patches}
        outs = {}
        for mode, attention in (
            ("packed", packed_attention),
            ("sdpa_per_window", _sdpa_per_window),
        ):
            vision.varlen_attention = attention
            with torch.inference_mode():
                outs[mode] = tower(pixels, grids)
                torch.cuda.synchronize()
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    tower(pixels, grids)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
            row[f"{mode}_ms"] = 1e3 * float(np.median(times))
        vision.varlen_attention = packed_attention
        if args.profile_dir:
            _profile_tower(tower, pixels, grids, os.path.join(args.profile_dir, f"vit_{name}.txt"))
        row["speedup"] = row["sdpa_per_window_ms"] / row["packed_ms"]
        row["max_abs_diff"] = float((outs["packed"] - outs["sdpa_per_window"]).abs().max())
        result[name] = row
        print("vit", name, row, flush=True)
    return result


def _profile_tower(tower, pixels, grids, path: str) -> None:
    """The tower's kernels by total device time over one packed run, as a table in ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.inference_mode(), torch.profiler.profile(activities=activities) as prof:
        tower(pixels, grids)
        torch.cuda.synchronize()
    with open(path, "w") as f:
        f.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=["images", "video", "vit"], required=True)
    parser.add_argument("--num-requests", type=int, default=500)
    parser.add_argument("--num-videos", type=int, default=100)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile-dir", help="images / vit: PyTorch profiler tables here")
    parser.add_argument("--profile-requests", type=int, default=48, help="images: profiled")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    path = write_dummy_checkpoint(MODEL, os.path.join(tempfile.mkdtemp(), MODEL))
    run = {"images": stage_images, "video": stage_video, "vit": stage_vit}[args.stage]
    write_stage_result("bench_gpu_qwen2_vl", MODEL, args, run(path, args))


if __name__ == "__main__":
    main()
