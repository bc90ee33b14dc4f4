"""Qwen2-Audio-7B (random bf16 weights) on one GPU: mmcore offline req/s vs HF ``generate()`` at
its best batch, same requests, same run.

Each request: one clip of speech-like noise (``--clip-seconds``) + ~32 text tokens, exactly
``--output-len`` new tokens (ignore_eos / min_new_tokens). The checkpoint folder holds the
Qwen2-Audio-7B config (Whisper-large-v3-sized audio encoder, Qwen2-7B LM) with a small tokenizer
carrying Qwen2-Audio's special tokens; mmcore loads it with ``load_format="dummy"``, HF builds
the model from the config on the GPU (random init).

Usage: python bench/bench_gpu_qwen2_audio.py --out DIR [--num-requests 128]
       [--hf-batch-sizes 16 32] [--smoke]   (--smoke: a tiny model on the CPU)
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

from mmcore import Engine, SamplingParams

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nWhat is said in this clip? Transcribe it, "
    "then describe the speaker.<|im_end|>\n<|im_start|>assistant\n"
)


def write_checkpoint(path: str, smoke: bool) -> None:
    """Qwen2-Audio-7B's config (or a tiny one), tokenizer and feature extractor, no weights."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    from mmcore.testing.tiny_audio_checkpoints import build_qwen_audio_tokenizer

    tok = build_qwen_audio_tokenizer()
    audio_id = tok.convert_tokens_to_ids("<|AUDIO|>")
    if smoke:
        audio = Qwen2AudioEncoderConfig(
            num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
            d_model=32,
        )  # fmt: skip
        text = Qwen2Config(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
    else:  # Qwen/Qwen2-Audio-7B-Instruct
        audio = Qwen2AudioEncoderConfig(
            num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20,
            encoder_ffn_dim=5120, d_model=1280, max_source_positions=1500,
        )  # fmt: skip
        text = Qwen2Config(
            vocab_size=156032, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
            rope_theta=10000.0, rms_norm_eps=1e-5,
        )  # fmt: skip
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=audio_id)
    config.audio_token_id = audio_id
    config.dtype = "bfloat16"
    config.save_pretrained(path)
    Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok
    ).save_pretrained(path)


def make_clips(n: int, seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32) for _ in range(n)]


def run_mmcore(path, clips, args, device) -> dict:
    engine = Engine(path, load_format="dummy", device=device, max_num_seqs=256)
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    prompts = [{"prompt": PROMPT, "multi_modal_data": {"audio": [(c, 16000)]}} for c in clips]
    engine.generate(prompts[:4], params, use_tqdm=False)  # warm-up (graphs, kernels)
    start = time.perf_counter()
    engine.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    stats = engine.stats()
    del engine
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"elapsed_s": elapsed, "req_per_s": len(clips) / elapsed,
            "cuda_graph_steps": stats.get("cuda_graph_steps", 0)}  # fmt: skip


@torch.inference_mode()
def run_hf(path, clips, args, device, batch: int) -> dict:
    from transformers import AutoConfig, AutoProcessor, Qwen2AudioForConditionalGeneration

    config = AutoConfig.from_pretrained(path)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        torch.set_default_dtype(dtype)
        model = Qwen2AudioForConditionalGeneration(config).eval()
        torch.set_default_dtype(torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    kwargs = dict(max_new_tokens=args.output_len, min_new_tokens=args.output_len, do_sample=False)

    def one(chunk):
        inputs = processor(
            text=[PROMPT] * len(chunk), audio=chunk, sampling_rate=16000, return_tensors="pt",
            padding=True,
        ).to(device)  # fmt: skip
        inputs["input_features"] = inputs["input_features"].to(dtype)
        model.generate(**inputs, **kwargs, pad_token_id=processor.tokenizer.pad_token_id)

    one(clips[:2])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(clips), batch):
        one(clips[i : i + batch])
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    model = None  # frees the weights before the next batch size
    gc.collect()
    return {"batch": batch, "elapsed_s": elapsed, "req_per_s": len(clips) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--num-requests", type=int, default=128)
    parser.add_argument("--hf-requests", type=int, default=64)
    parser.add_argument("--hf-batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.num_requests, args.hf_requests, args.output_len = 4, 2, 4
        args.hf_batch_sizes = [2]
    with tempfile.TemporaryDirectory() as path:
        write_checkpoint(path, args.smoke)
        clips = make_clips(args.num_requests, args.clip_seconds)
        result = {"model": "qwen2-audio-7b (dummy weights)" if not args.smoke else "tiny",
                  "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "args": vars(args), "mmcore": run_mmcore(path, clips, args, device)}  # fmt: skip
        result["hf"] = [
            run_hf(path, clips[: args.hf_requests], args, device, b) for b in args.hf_batch_sizes
        ]
    best = max(result["hf"], key=lambda r: r["req_per_s"])
    result["speedup_vs_best_hf"] = result["mmcore"]["req_per_s"] / best["req_per_s"]
    print(json.dumps(result, indent=2))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_gpu_qwen2_audio.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
