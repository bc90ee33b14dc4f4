"""Gemma 3 on a GPU: offline throughput vs HF generate(), batch-1 ITL, and KV memory at 8k.

Model: a released Gemma 3 architecture (``--model gemma-3-12b-it`` default, or
``gemma-3-27b-it``) with random bf16 weights (``load_format="dummy"`` over
:func:`mmcore.testing.dummy_gemma3.write_gemma3_checkpoint`; HF's model is built from the same
config on the GPU).

Stages (``--stage``):
  offline  ``--num-requests`` prompts, one random 896x896 image (256 tokens) + ``--text-len``
           text tokens, ``--output-len`` tokens each: mmcore req/s, HF generate() req/s at its
           best batch size (left padding, ``token_type_ids`` for the image mask), batch-1 TTFT
           and inter-token latency (median of ``--latency-runs``).
  kv       ``--long-len``-token text prompts through two engines at equal KV memory: the hybrid
           KV cache (sliding-window groups free their out-of-window blocks) and
           ``disable_hybrid_kv_cache_manager=True`` (every layer keeps every block). Per
           engine: blocks one sequence holds, how many such sequences fit (decode steady state
           and prefill peak), the measured peak of running sequences, preemptions and
           throughput on the same workload; then the ratios (goal: >= 3x sequences).

``--smoke`` runs the kv stage on the CPU with the tiny Gemma 3 checkpoint (window 8) and small
lengths: it checks the script end to end, the figures mean nothing.

Usage: python bench/bench_gpu_gemma3.py --stage offline --out DIR   (one JSON per stage)
"""

from __future__ import annotations

import argparse
import gc
import math
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
from mmcore.testing.dummy_gemma3 import GEMMA3_CONFIGS, write_gemma3_checkpoint


def _image(rng: np.random.Generator, side: int):
    from PIL import Image

    coarse = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    return Image.fromarray(np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1))


def image_requests(path: str, num: int, text_len: int, seed: int) -> list[dict]:
    """``<bos>`` + ``<start_of_image>`` + ``text_len`` random ids (below the special tokens)."""
    from transformers import AutoConfig, AutoTokenizer

    config, tok = AutoConfig.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    rng = np.random.default_rng(seed)
    first_plain = max(tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens) + 1
    return [
        {
            "prompt_token_ids": [tok.bos_token_id, config.boi_token_index]
            + rng.integers(first_plain, len(tok), text_len).tolist(),
            "multi_modal_data": {"image": _image(rng, 896)},
        }
        for _ in range(num)
    ]


def _engine(path: str, args, **extra) -> Engine:
    if args.smoke:  # the tiny checkpoint's own weights, on the CPU
        return Engine(path, device="cpu", block_size=4, max_model_len=args.max_model_len, **extra)
    return Engine(
        path,
        load_format="dummy",
        device="cuda",
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        **extra,
    )


def hf_offline(path: str, args) -> list[dict]:
    """HF generate() on batches of the same requests (left padding), per batch size."""
    from transformers import AutoConfig, AutoProcessor, Gemma3ForConditionalGeneration

    config = AutoConfig.from_pretrained(path)
    with torch.device("cuda"):
        model = Gemma3ForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    processor = AutoProcessor.from_pretrained(path)
    image_id, pad = config.image_token_index, config.text_config.pad_token_id
    tokens = config.mm_tokens_per_image
    seq = [config.boi_token_index] + [image_id] * tokens + [config.eoi_token_index]

    def run(batch: list[dict], new_tokens: int) -> None:
        pixels = processor.image_processor(
            images=[r["multi_modal_data"]["image"] for r in batch], return_tensors="pt"
        )["pixel_values"]
        rows = [r["prompt_token_ids"][:1] + seq + r["prompt_token_ids"][2:] for r in batch]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device="cuda")
        mask = (ids != pad).long()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=mask, token_type_ids=(ids == image_id).long(),
                pixel_values=pixels.to("cuda", torch.bfloat16), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False,
            )  # fmt: skip
        assert out.shape[1] == width + new_tokens

    return hf_batch_sweep(
        run,
        lambda n, seed: image_requests(path, n, args.text_len, seed),
        args.hf_batch_sizes,
        args.output_len,
    )


def stage_offline(path: str, args) -> dict:
    machine = measure_machine()
    print("machine", machine, flush=True)
    engine = _engine(path, args, limit_mm_per_prompt={"image": 1})
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    engine.generate(image_requests(path, 4, args.text_len, 1), params, use_tqdm=False)
    requests = image_requests(path, args.num_requests, args.text_len, 2)
    start = time.perf_counter()
    outputs = engine.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == args.output_len for o in outputs)
    ours = {"elapsed_s": elapsed, "req_per_s": len(requests) / elapsed, **engine.stats()}
    print("mmcore", ours, flush=True)
    ours["batch1"] = batch1_latency(
        engine, image_requests(path, args.latency_runs, args.text_len, 3), params
    )
    print("mmcore batch 1", ours["batch1"], flush=True)
    ours["cuda_graphs"] = engine.runner.use_decode_graphs if hasattr(engine, "runner") else None
    shapes = model_shapes(engine)
    prompt_len = len(engine.inputs.process(requests[0]).token_ids)
    concurrent = min(
        args.max_num_seqs,
        engine.config.num_blocks * engine.config.block_size // (prompt_len + args.output_len),
    )
    vision = engine.model.config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    bound = roofline(
        shapes, machine, num_requests=len(requests), prompt_len=prompt_len,
        out_len=args.output_len, vit_tokens=patches, vit_layers=vision.num_hidden_layers,
        vit_hidden=vision.hidden_size, batch=concurrent, hidden=shapes["hidden"],
    )  # fmt: skip
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    result = {"mmcore": ours, "roofline": bound, "shapes": shapes, "machine": machine,
              "prompt_len": prompt_len, "concurrent_requests": concurrent}  # fmt: skip
    result["fraction_of_roofline"] = ours["req_per_s"] / bound["req_per_s_bound"]
    # Batch-1 bound: the LM weights (head included) and the mean context's KV read once a token.
    result["itl_over_bound"] = ours["batch1"]["itl_s"] / bound["itl_bound_s"]
    try:
        result["hf"] = hf_offline(path, args)
        best = max((r["req_per_s"] for r in result["hf"] if "req_per_s" in r), default=None)
        result["speedup_vs_best_hf"] = ours["req_per_s"] / best if best else None
    except Exception as exc:  # keep mmcore's numbers when the baseline fails
        result["hf_error"] = repr(exc)
    return result


def kv_blocks_per_sequence(engine: Engine, seq_len: int, chunk: int) -> dict:
    """Block ids one ``seq_len``-token sequence holds in ``engine``'s KV cache: every group
    keeps every block without sliding groups; a sliding group keeps its window plus, while a
    prefill chunk runs, the chunk (peak), or plus one block once decoding (steady state)."""
    config = engine.config
    windows = list(config.scheduler_config.kv_group_windows) or [-1]
    per_group = math.ceil(seq_len / config.block_size)

    def held(tokens_seen: int) -> int:
        sliding = min(per_group, math.ceil(tokens_seen / config.block_size) + 1)
        return sum(per_group if w <= 0 else sliding for w in windows)

    window = max(windows)
    return {
        "num_kv_groups": len(windows),
        "blocks_prefill_peak": held(window + chunk) if window > 0 else per_group,
        "blocks_decode": held(window) if window > 0 else per_group,
    }


def kv_run(path: str, args, *, keep_all: bool, kv_bytes: int | None, num_requests: int | None):
    """``num_requests`` (None: enough to fill the cache) ``--long-len``-token prompts through
    one engine, with (``keep_all=False``) or without freeing out-of-window blocks."""
    extra = dict(
        max_num_batched_tokens=args.chunk,
        enable_prefix_caching=False,  # distinct prompts: hits would not change the picture
        disable_hybrid_kv_cache_manager=keep_all,
    )
    if kv_bytes is not None:
        extra["kv_cache_memory_bytes"] = kv_bytes
    engine = _engine(path, args, **extra)
    config = engine.config
    seq = args.long_len + args.kv_output_len
    per_seq = kv_blocks_per_sequence(engine, seq, args.chunk)
    fits = {
        "fit_decode": config.num_blocks // per_seq["blocks_decode"],
        "fit_prefill_peak": config.num_blocks // per_seq["blocks_prefill_peak"],
    }
    if num_requests is None:
        num_requests = fits["fit_decode"] + args.extra_requests
    rng = np.random.default_rng(5)
    vocab = len(engine.tokenizer)  # ids the engine accepts (below the special tokens' range)
    prompts = [
        {"prompt_token_ids": rng.integers(16, vocab, args.long_len).tolist()}
        for _ in range(num_requests)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=args.kv_output_len, ignore_eos=True)
    for index, prompt in enumerate(prompts):
        engine.add_request(f"kv-{index}", prompt, params)
    peak_running = peak_blocks = 0
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        stats = engine.stats()
        peak_running = max(peak_running, int(stats["num_running"]))
        peak_blocks = max(peak_blocks, int(stats["kv_blocks_used"]))
    elapsed = time.perf_counter() - start
    stats = engine.stats()
    result = {
        "hybrid": not keep_all,
        "kv_cache_bytes": config.num_blocks * config.kv_block_bytes,
        "kv_block_bytes": config.kv_block_bytes,
        "num_blocks": config.num_blocks,
        "block_size": config.block_size,
        "sequence_tokens": seq,
        **per_seq,
        **fits,
        "num_requests": num_requests,
        "measured_peak_running": peak_running,
        "measured_peak_kv_blocks_used": peak_blocks,
        "elapsed_s": elapsed,
        "req_per_s": num_requests / elapsed,
        "output_tok_per_s": num_requests * args.kv_output_len / elapsed,
        **stats,
    }
    print("kv hybrid" if not keep_all else "kv keep-all", result, flush=True)
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def stage_kv(path: str, args) -> dict:
    """Hybrid (free out-of-window sliding blocks) vs keep-all, same prompts, equal KV memory:
    the first engine sizes the cache (profiled on GPU), the second gets the same bytes."""
    hybrid = kv_run(
        path, args, keep_all=False, kv_bytes=args.kv_bytes, num_requests=args.kv_requests
    )
    keep_all = kv_run(
        path,
        args,
        keep_all=True,
        kv_bytes=hybrid["kv_cache_bytes"],
        num_requests=hybrid["num_requests"],
    )
    return {
        "hybrid": hybrid,
        "keep_all": keep_all,
        "concurrent_ratio_decode": hybrid["fit_decode"] / max(keep_all["fit_decode"], 1),
        "concurrent_ratio_prefill_peak": hybrid["fit_prefill_peak"]
        / max(keep_all["fit_prefill_peak"], 1),
        "measured_peak_running_ratio": hybrid["measured_peak_running"]
        / max(keep_all["measured_peak_running"], 1),
        "throughput_ratio": hybrid["req_per_s"] / keep_all["req_per_s"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", choices=["offline", "kv"], required=True)
    parser.add_argument("--model", choices=sorted(GEMMA3_CONFIGS), default="gemma-3-12b-it")
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--latency-runs", type=int, default=3)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=10240)
    parser.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--long-len", type=int, default=8192)
    parser.add_argument("--kv-output-len", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=2048, help="max_num_batched_tokens (kv)")
    parser.add_argument("--extra-requests", type=int, default=8)
    parser.add_argument(
        "--kv-requests",
        type=int,
        default=None,
        help="prompts per kv run (default: the hybrid cache's fit + --extra-requests)",
    )
    parser.add_argument(
        "--kv-bytes", type=int, default=None, help="KV cache bytes (kv; default: profiled)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="kv stage on the CPU with a tiny checkpoint"
    )
    parser.add_argument("--out", default=".")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.smoke:
        from mmcore.testing.tiny_gemma3 import build_tiny_gemma3

        if args.stage != "kv":
            raise SystemExit("--smoke runs the kv stage only")
        path = build_tiny_gemma3(os.path.join(tempfile.mkdtemp(), "tiny_gemma3"))
    else:
        path = write_gemma3_checkpoint(args.model, os.path.join(tempfile.mkdtemp(), args.model))
    run = {"offline": stage_offline, "kv": stage_kv}[args.stage]
    write_stage_result("bench_gpu_gemma3", args.model, args, run(path, args))


if __name__ == "__main__":
    main()
