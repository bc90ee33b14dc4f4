"""Offline throughput and latency of mmcore on a GPU vs HF generate(), with a measured roofline.

Model: a real architecture with random fp16 weights (its config's dtype) (``load_format="dummy"``
over :func:`mmcore.testing.dummy_checkpoint.write_dummy_checkpoint`; HF's model built from the same
config on the GPU). Each request: one distinct random 336x336 image + 64 text tokens, 128 output
tokens (ignore_eos). The roofline uses the copy bandwidth and bf16 matmul throughput measured in
the same process.

Usage: python bench/bench_gpu_offline.py --num-requests 1000 --out DIR
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

BOS, IMAGE_TOKEN = 1, 32000


def _cuda_time(fn, iters: int) -> float:
    """Median seconds of ``fn`` over ``iters`` runs, timed with CUDA events after a warm-up."""
    fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def measure_machine() -> dict:
    """Device-to-device copy bandwidth (read + write bytes) and bf16 matmul throughput."""
    n = 2 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_s = _cuda_time(lambda: dst.copy_(src), 20)
    src = dst = None  # free 4 GiB before the matmul
    m = 8192
    a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    mm_s = _cuda_time(lambda: a @ b, 20)
    return {"copy_bytes_per_s": 2 * n / copy_s, "matmul_flops_per_s": 2 * m**3 / mm_s}


def _image(rng: np.random.Generator, size: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_requests(num: int, text_tokens: int, image_size: int, seed: int) -> list[dict]:
    """``num`` prompts: BOS + one image placeholder + ``text_tokens - 1`` random text ids."""
    rng = np.random.default_rng(seed)
    return [
        {
            "prompt_token_ids": [BOS, IMAGE_TOKEN]
            + rng.integers(3, IMAGE_TOKEN, text_tokens - 1).tolist(),
            "multi_modal_data": {"image": [_image(rng, image_size)]},
        }
        for _ in range(num)
    ]


def model_shapes(engine: Engine) -> dict:
    """Parameter counts and per-token KV bytes of the engine's model."""
    model = engine.model
    lm = model.language_model
    lm_params = sum(p.numel() for p in lm.parameters())
    # A tied head reads the embedding matrix every step: count it as a matmul weight then.
    tied = getattr(lm, "tie_word_embeddings", False)
    embed = 0 if tied else lm.model.embed_tokens.weight.numel()
    vision = sum(p.numel() for p in model.parameters()) - lm_params
    kv_token = 2 * model.num_layers * model.num_kv_heads * model.head_dim * 2
    return {
        "lm_params": lm_params,
        "lm_matmul_params": lm_params - embed,
        "vision_params": vision,
        "weight_bytes": 2 * sum(p.numel() for p in model.parameters()),
        "lm_weight_bytes": 2 * (lm_params - embed),
        "kv_bytes_per_token": kv_token,
        "num_layers": model.num_layers,
        "hidden": model.hidden_size,
    }


def roofline(shapes: dict, machine: dict, *, num_requests, prompt_len, out_len, vit_tokens,
             vit_layers, vit_hidden, batch, hidden) -> dict:  # fmt: skip
    """Lower bounds on time, as issue 7 defines the roofline: prefill FLOPs (prompt tokens + ViT)
    at the matmul rate plus decode bytes (weights + KV read per step) at the copy bandwidth.
    ``req_per_s_bound_overlapped`` is the stricter bound of an engine that hid every decode
    byte behind prefill compute: max(all FLOPs / matmul rate, decode bytes / bandwidth)."""
    layers = shapes["num_layers"]
    p_lm = shapes["lm_matmul_params"]
    attn_prefill = 4 * layers * hidden * prompt_len * (prompt_len + 1) / 2
    vit = 2 * shapes["vision_params"] * vit_tokens + 4 * vit_layers * vit_hidden * vit_tokens**2
    mean_ctx = prompt_len + out_len / 2
    attn_decode = 4 * layers * hidden * mean_ctx * out_len
    flops = num_requests * (2 * p_lm * (prompt_len + out_len) + attn_prefill + attn_decode + vit)
    steps = math.ceil(num_requests / batch) * out_len
    decode_bytes = steps * (
        shapes["lm_weight_bytes"] + batch * mean_ctx * shapes["kv_bytes_per_token"]
    )
    t_compute = flops / machine["matmul_flops_per_s"]
    t_memory = decode_bytes / machine["copy_bytes_per_s"]
    prefill_one = 2 * p_lm * prompt_len + attn_prefill + vit
    t_prefill = num_requests * prefill_one / machine["matmul_flops_per_s"]
    bound = t_prefill + t_memory
    overlapped = max(t_compute, t_memory)
    return {
        "compute_s": t_compute,
        "prefill_compute_s": t_prefill,
        "decode_memory_s": t_memory,
        "req_per_s_bound": num_requests / bound,
        "out_tok_per_s_bound": num_requests * out_len / bound,
        "req_per_s_bound_overlapped": num_requests / overlapped,
        "ttft_bound_s": max(
            prefill_one / machine["matmul_flops_per_s"],
            shapes["weight_bytes"] / machine["copy_bytes_per_s"],
        ),
        "itl_bound_s": (shapes["lm_weight_bytes"] + mean_ctx * shapes["kv_bytes_per_token"])
        / machine["copy_bytes_per_s"],
    }


class StepTimer:
    """Wall time of Engine.step and of the runner's launch inside it (host work enqueuing the
    step). Without overlap a step also waits for its own tokens; with overlap (async
    scheduling) it waits for the previous step's while the new one runs."""

    def __init__(self, engine: Engine) -> None:
        self.steps, self.graph_steps, self.step_s, self.launch_s = 0, 0, 0.0, 0.0
        self._engine = engine
        self._launch, self._step = engine.runner.launch, engine.step
        engine.runner.launch, engine.step = self._timed_launch, self._timed_step

    def _timed_launch(self, out):
        start = time.perf_counter()
        result = self._launch(out)
        self.launch_s += time.perf_counter() - start
        return result

    def _timed_step(self):
        start = time.perf_counter()
        graphs_before = self._engine.runner.num_graph_steps
        result = self._step()
        self.step_s += time.perf_counter() - start
        self.steps += 1
        self.graph_steps += self._engine.runner.num_graph_steps - graphs_before
        return result

    def close(self) -> dict:
        self._engine.runner.launch, self._engine.step = self._launch, self._step
        return {
            "steps": self.steps,
            "graph_steps": self.graph_steps,
            "async_scheduling": self._engine.async_scheduling,
            "step_ms": 1e3 * self.step_s / max(1, self.steps),
            "launch_ms_per_step": 1e3 * self.launch_s / max(1, self.steps),
        }


def hf_batch_sweep(run, requests_for, batch_sizes: list[int], output_len: int) -> list[dict]:
    """HF ``generate()`` req/s at each batch size: two batches of that size, timed, after a
    warm-up of two requests; a batch size that runs out of memory is recorded, not raised.

    Args:
        run: ``run(requests, new_tokens)`` generates one batch with HF.
        requests_for: ``requests_for(count, seed)`` makes that many requests.
        batch_sizes: the sizes to try.
        output_len: new tokens per request.
    """
    run(requests_for(2, 90), 4)
    rows = []
    for batch in batch_sizes:
        requests = requests_for(2 * batch, 91 + batch)
        try:
            torch.cuda.synchronize()
            start = time.perf_counter()
            for chunk in (requests[:batch], requests[batch:]):
                run(chunk, output_len)
            torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "oom": True})
            torch.cuda.empty_cache()
            continue
        elapsed = time.perf_counter() - start
        rows.append({"batch": batch, "elapsed_s": elapsed, "req_per_s": 2 * batch / elapsed})
        print("hf", rows[-1], flush=True)
    return rows


def write_stage_result(script: str, model: str, args, stage_result: dict) -> dict:
    """Record one stage's result with the card, date, model and arguments: writes
    ``args.out/{script}_{args.stage}.json`` and prints it; returns the record."""
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": model,
        "args": vars(args),
        args.stage: stage_result,
    }
    out_path = os.path.join(args.out, f"{script}_{args.stage}.json")
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2, default=float)
    print(json.dumps(result, indent=2, default=float))
    return result


def _throughput(engine: Engine, requests: list, params: SamplingParams, output_len: int) -> dict:
    timer = StepTimer(engine)
    start = time.perf_counter()
    outputs = engine.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    steps = timer.close()
    assert all(len(o.outputs[0].token_ids) == output_len for o in outputs)
    return {
        "num_requests": len(requests),
        "elapsed_s": elapsed,
        "req_per_s": len(requests) / elapsed,
        "out_tok_per_s": len(requests) * output_len / elapsed,
        **steps,
    }


def _latency(engine: Engine, prompts: list, params: SamplingParams) -> dict:
    """Batch 1: TTFT (from add_request, image preprocessing included) and inter-token latency."""
    ttfts, itls = [], []
    for i, prompt in enumerate(prompts):
        start = time.perf_counter()
        engine.add_request(f"lat{i}-{id(prompts)}", prompt, params)
        stamps = []
        while engine.has_unfinished_requests():
            if engine.step():
                stamps.append(time.perf_counter())
        ttfts.append(stamps[0] - start)
        itls.append(float(np.median(np.diff(stamps))))
    return {"ttft_s": float(np.median(ttfts)), "itl_s": float(np.median(itls))}


def bench_mmcore(path: str, args) -> tuple[dict, dict, Engine]:
    """Throughput and batch-1 latency per mode (graphs + overlap, sync, eager), one engine."""
    start = time.perf_counter()
    engine = Engine(path, load_format="dummy", device="cuda", max_num_seqs=args.max_num_seqs)
    startup_s = time.perf_counter() - start
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    engine.generate(make_requests(8, args.text_len, 336, seed=1), params, use_tqdm=False)
    result = {
        "startup_s": startup_s,
        "num_blocks": engine.config.num_blocks,
        "block_size": engine.config.block_size,
    }
    for seed, mode in enumerate(args.modes):
        # graphs: decode graphs + overlapped scheduling (the CUDA defaults); sync: graphs
        # without overlap; eager: overlap without graphs.
        engine.runner.use_decode_graphs = mode in ("graphs", "sync")
        engine.async_scheduling = mode != "sync"
        requests = make_requests(args.num_requests, args.text_len, 336, seed=10 + seed)
        result[mode] = _throughput(engine, requests, params, args.output_len)
        result[mode].update(
            _latency(engine, make_requests(5, args.text_len, 336, 20 + seed), params)
        )
        print("mmcore", mode, result[mode], flush=True)
    engine.runner.use_decode_graphs, engine.async_scheduling = True, True
    result["sweep"] = []
    for batch in args.sweep:
        # As HF runs: 2 batches of `batch` requests one after the other.
        requests = make_requests(2 * batch, args.text_len, 336, seed=40 + batch)
        start = time.perf_counter()
        for chunk in (requests[:batch], requests[batch:]):
            engine.generate(chunk, params, use_tqdm=False)
        elapsed = time.perf_counter() - start
        row = {
            "batch": batch,
            "num_requests": 2 * batch,
            "elapsed_s": elapsed,
            "req_per_s": 2 * batch / elapsed,
            "out_tok_per_s": 2 * batch * args.output_len / elapsed,
        }
        result["sweep"].append(row)
        print("mmcore sweep", row, flush=True)
    t0 = time.perf_counter()
    for r in make_requests(50, args.text_len, 336, seed=30):
        engine.inputs.process(r)
    result["preprocess_s_per_request"] = (time.perf_counter() - t0) / 50
    result["cuda_graph_steps"] = engine.stats()["cuda_graph_steps"]
    return result, model_shapes(engine), engine


def bench_hf(path: str, args) -> list[dict]:
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    config = AutoConfig.from_pretrained(path)
    with torch.device("cuda"):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    image_processor = AutoProcessor.from_pretrained(path).image_processor
    rng = np.random.default_rng(4)
    num_patches = (336 // 14) ** 2

    def run(batch: int, new_tokens: int) -> None:
        images = [_image(rng, 336) for _ in range(batch)]
        pixels = image_processor(images, return_tensors="pt")["pixel_values"]
        ids = [
            [BOS] + [IMAGE_TOKEN] * num_patches + rng.integers(3, IMAGE_TOKEN, args.text_len - 1).tolist()
            for _ in range(batch)
        ]  # fmt: skip
        input_ids = torch.tensor(ids, device="cuda")
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=pixels.to("cuda", torch.bfloat16),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
        assert out.shape[1] == input_ids.shape[1] + new_tokens

    run(2, 4)
    rows = []
    for batch in args.hf_batch_sizes:
        num = 2 * batch
        try:
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(num // batch):
                run(batch, args.output_len)
            torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
        except torch.OutOfMemoryError:
            rows.append({"batch": batch, "oom": True})
            torch.cuda.empty_cache()
            continue
        rows.append(
            {
                "batch": batch,
                "num_requests": num,
                "elapsed_s": elapsed,
                "req_per_s": num / elapsed,
                "out_tok_per_s": num * args.output_len / elapsed,
            }
        )
        print("hf", rows[-1], flush=True)
    start = time.perf_counter()
    run(1, 1)
    torch.cuda.synchronize()
    ttft = time.perf_counter() - start
    start = time.perf_counter()
    run(1, 33)
    torch.cuda.synchronize()
    itl = (time.perf_counter() - start - ttft) / 32
    rows.append({"batch": 1, "ttft_s": ttft, "itl_s": itl})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--hf-batch-sizes", type=int, nargs="*", default=[16, 64, 128])
    parser.add_argument("--sweep", type=int, nargs="*", default=[16, 64, 128, 256])
    parser.add_argument("--modes", nargs="+", default=["graphs", "sync", "eager"])
    parser.add_argument("--out", default=".")
    args = parser.parse_args()

    machine = measure_machine()
    print("machine", machine, flush=True)
    path = write_dummy_checkpoint(args.model, os.path.join(tempfile.mkdtemp(), args.model))
    ours, shapes, engine = bench_mmcore(path, args)
    hidden = shapes["hidden"]
    concurrent = min(
        args.max_num_seqs,
        ours["num_blocks"] * ours["block_size"] // (1 + args.text_len + 576 + args.output_len),
    )
    bound = roofline(
        shapes, machine, num_requests=args.num_requests, prompt_len=args.text_len + 576,
        out_len=args.output_len, vit_tokens=577, vit_layers=23, vit_hidden=1024,
        batch=concurrent, hidden=hidden,
    )  # fmt: skip
    print("roofline", bound, flush=True)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": args.model,
        "machine": machine,
        "shapes": shapes,
        "concurrent_requests": concurrent,
        "mmcore": ours,
        "roofline": bound,
    }
    out_path = os.path.join(args.out, "bench_gpu_offline.json")
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    try:
        if args.hf_batch_sizes:  # an empty list skips the HF baseline
            result["hf"] = bench_hf(path, args)
    except Exception as exc:  # keep the mmcore numbers when the baseline fails
        result["hf_error"] = repr(exc)
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
