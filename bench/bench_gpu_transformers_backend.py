"""Transformers backend vs native mmcore vs HF generate() on one GPU, same requests, one run.

Model: a weightless checkpoint of a real architecture (``load_format="dummy"`` over
:func:`mmcore.testing.dummy_checkpoint.write_dummy_checkpoint`): ``llava-1.5-7b`` (fp16;
backend, native and HF) or ``idefics3-8b`` (bf16; mmcore has no native Idefics3, so backend
and HF only). Each request is built through the model's own chat template: one user turn of
one distinct random ``--image-size`` square image (default: the vision tower's tile, 336 px for
LLaVA, 364 px for Idefics3, which the released Idefics3 processor upscales to a 4x4 grid of
364 px tiles plus the global image: 17 x 169 = 2873 image embeddings) and ~64 text tokens;
``--max-tokens`` output tokens (ignore_eos). The systems run one after the other in this
process (each frees the GPU before the next); HF generate() runs in batches of
``--hf-batch-size`` over the first ``--hf-requests`` requests, through the same processor.

Goal of the issue (LLaVA): backend >= 70% of native output tokens/s, and >= 3x HF.

``--smoke`` runs the same code on CPU in float32 with the model shrunk (real tokenizer,
processor and image sizes; 2 LM layers of width 64, a 1-layer vision tower) and exits non-zero
unless the backend's expanded prompts and greedy tokens equal HF's.

Usage: python bench/bench_gpu_transformers_backend.py --model idefics3-8b --num-requests 200 \
    --hf-requests 64 --hf-batch-size 32 --max-tokens 64 --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

# A shrunk model for --smoke (CPU): the released tokenizer, processor and image sizes.
SMOKE_OVERRIDES = {
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "dtype": "float32",
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    },
    "dtype": "float32",
}


def _words() -> list[str]:
    """Words of the dummy tokenizers' training corpus (a few BPE pieces each)."""
    from mmcore.testing.tiny_checkpoints import _CORPUS

    return sorted({w for line in _CORPUS for w in line.split() if w.isalpha()})


def make_requests(processor, num: int, text_tokens: int, image_size: int, seed: int) -> list[dict]:
    """``num`` chat prompts through the model's chat template: one image, then random words
    of at least ``text_tokens`` tokens; a distinct random image each.

    Returns:
        Dicts of ``prompt`` (the rendered template), ``prompt_token_ids`` (its tokens, one
        image placeholder) and ``image``.
    """
    rng = np.random.default_rng(seed)
    tokenizer, words = processor.tokenizer, _words()

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    requests = []
    for _ in range(num):
        text = str(rng.choice(words))
        while count(text) < text_tokens:
            text += " " + str(rng.choice(words))
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        prompt = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
        bos = tokenizer.bos_token
        if bos and not prompt.startswith(bos):  # templates without BOS (Vicuna) get it here
            prompt = bos + prompt
        pixels = rng.integers(0, 256, (image_size, image_size, 3), np.uint8)
        requests.append(
            {
                "prompt": prompt,
                "prompt_token_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"],
                "image": Image.fromarray(pixels),
            }
        )
    return requests


def _engine_prompt(request: dict) -> dict:
    return {
        "prompt_token_ids": request["prompt_token_ids"],
        "multi_modal_data": {"image": [request["image"]]},
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_engine(model_dir: str, model_impl: str, requests: list[dict], args) -> dict:
    """Output tokens/s of one Engine over all requests (one warm-up request first)."""
    started = time.perf_counter()
    options = dict(enforce_eager=args.enforce_eager, max_num_seqs=args.max_num_seqs)
    if args.smoke:
        options.update(device="cpu", dtype="float32", max_model_len=8192)
    engine = Engine(model_dir, load_format="dummy", model_impl=model_impl, **options)
    load_s = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    prompts = [_engine_prompt(r) for r in requests]
    engine.generate(prompts[:1], params, use_tqdm=False)
    _sync(args.device)
    start = time.perf_counter()
    outputs = engine.generate(prompts, params, use_tqdm=False)
    _sync(args.device)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    runner = getattr(engine, "runner", None)
    result = {
        "model_impl": model_impl,
        "model_class": type(engine.model).__name__,
        "cuda_graphs": getattr(runner, "decode_graphs", None) is not None,
        "load_s": load_s,
        "seconds": elapsed,
        "prompt_tokens_per_request": float(np.mean([len(o.prompt_token_ids) for o in outputs])),
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / elapsed,
        "requests_per_s": len(requests) / elapsed,
    }
    greedy = {
        "prompt_ids": [list(o.prompt_token_ids) for o in outputs],
        "token_ids": [list(o.outputs[0].token_ids) for o in outputs],
    }
    del engine, outputs
    _free()
    return result, greedy


def _hf_dtype(config, args) -> torch.dtype:
    if args.smoke:
        return torch.float32
    dtype = getattr(config, "dtype", None) or torch.float16
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def run_hf(model_dir: str, requests: list[dict], args) -> tuple[dict, dict]:
    """HF generate() in batches over the same prompts (its processor expands the image)."""
    from transformers import AutoConfig, AutoProcessor

    from mmcore.model_loader import init_dummy_weights
    from mmcore.models.transformers_backend.loader import build_from_config
    from mmcore.models.transformers_backend.model import hf_model_class

    config = AutoConfig.from_pretrained(model_dir)
    dtype = _hf_dtype(config, args)
    # The class the backend builds: same parameter order, so the same dummy weights.
    model = build_from_config(hf_model_class(config), config, dtype, args.device).eval()
    init_dummy_weights(model, seed=0)
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    chosen = requests[: args.hf_requests]
    prompt_ids, token_ids, image_embeds = [], [], 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(chosen), args.hf_batch_size):
            batch = chosen[i : i + args.hf_batch_size]
            inputs = processor(
                text=[r["prompt"] for r in batch],
                images=[[r["image"]] for r in batch],
                padding=True,
                return_tensors="pt",
                add_special_tokens=False,
            ).to(args.device, dtype)
            out = model.generate(
                **inputs,
                max_new_tokens=args.max_tokens,
                min_new_tokens=args.max_tokens,
                do_sample=False,
            )
            width = inputs["input_ids"].shape[1]
            for row, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
                prompt_ids.append(row[mask.bool()].tolist())
            token_ids += out[:, width:].tolist()
            image_embeds = int((inputs["input_ids"][0] == config.image_token_id).sum())
    _sync(args.device)
    elapsed = time.perf_counter() - start
    del model
    _free()
    tokens = sum(len(t) for t in token_ids)
    result = {
        "model_impl": "hf_generate",
        "dtype": str(dtype),
        "requests": len(chosen),
        "batch_size": args.hf_batch_size,
        "image_embeds_per_request": image_embeds,
        "seconds": elapsed,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / elapsed,
    }
    return result, {"prompt_ids": prompt_ids, "token_ids": token_ids}


def _agreement(ours: dict, hf: dict) -> dict:
    """How many of HF's requests the engine expanded and decoded identically."""
    n = len(hf["token_ids"])
    return {
        "requests": n,
        "equal_prompt_ids": sum(a == b for a, b in zip(ours["prompt_ids"], hf["prompt_ids"])),
        "equal_greedy_tokens": sum(a == b for a, b in zip(ours["token_ids"], hf["token_ids"])),
    }


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-1.5-7b", help="a REAL_CONFIGS name")
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--hf-requests", type=int, default=1000)
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=None, help="default: the tile side")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--skip-native", action="store_true")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU, float32, shrunk model")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    args.device = "cpu" if args.smoke else "cuda"
    return args


def main() -> None:
    from transformers import AutoConfig, AutoProcessor

    from mmcore.multimodal.registry import supported_model_types

    args = _parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = SMOKE_OVERRIDES if args.smoke else None
        model_dir = write_dummy_checkpoint(args.model, tmp, overrides=overrides)
        config = AutoConfig.from_pretrained(model_dir)
        args.image_size = args.image_size or config.vision_config.image_size
        processor = AutoProcessor.from_pretrained(model_dir)
        requests = make_requests(
            processor, args.num_requests, args.text_tokens, args.image_size, seed=0
        )
        native = config.model_type in supported_model_types() and not args.skip_native
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        results = {"args": vars(args), "device": device, "model_type": config.model_type}
        results["image_processor"] = type(processor.image_processor).__name__
        if native:
            results["native"], _ = run_engine(model_dir, "mmcore", requests, args)
        results["transformers"], ours = run_engine(model_dir, "transformers", requests, args)
        if not args.skip_hf:
            results["hf"], theirs = run_hf(model_dir, requests, args)
            results["agreement_with_hf"] = _agreement(ours, theirs)
    backend = results["transformers"]["output_tokens_per_s"]
    if native:
        results["backend_vs_native"] = backend / results["native"]["output_tokens_per_s"]
    if "hf" in results:
        results["backend_vs_hf"] = backend / results["hf"]["output_tokens_per_s"]
    print(json.dumps(results, indent=2))
    for key in ("backend_vs_native", "backend_vs_hf"):
        if key in results:
            print(f"ratio {args.model} {key}: {results[key]:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    agreement = results.get("agreement_with_hf")
    if args.smoke and (agreement is None or agreement["equal_prompt_ids"] < agreement["requests"]):
        sys.exit("smoke: the engine's expanded prompts differ from HF's processor output")
    if args.smoke and agreement["equal_greedy_tokens"] < agreement["requests"]:
        sys.exit("smoke: the backend's greedy tokens differ from HF generate()'s")


if __name__ == "__main__":
    main()
