"""Whisper large-v3 on a GPU: transcription throughput (audio seconds per second) of mmcore vs
HF ``pipeline("automatic-speech-recognition")`` batched, and log-mel features on the GPU
(mmcore) vs HF's ``WhisperFeatureExtractor`` on the CPU, in the same run.

Model: Whisper large-v3's config (32+32 layers, d_model 1280, 128 mel bins, 51,866 tokens)
with random bf16 weights: mmcore loads the weightless folder with ``load_format="dummy"``; HF
builds ``WhisperForConditionalGeneration`` from the same config on the GPU. Random weights never
write ``<|endoftext|>``, so both generate exactly ``--new-tokens`` tokens per clip (mmcore:
``ignore_eos``; HF: ``min_new_tokens``), and both models get zero output-projection rows (the
embedding rows: Whisper ties them) for the timestamp tokens, so their logit is 0 and never the largest: random
weights would otherwise write timestamp pairs, after which HF's Whisper generate decodes again
from the last timestamp (its seek loop). So both do the same decoding work: one pass of
``--new-tokens`` tokens per clip, with no per-step constraint cost on either side.

Clips: ``--num-clips`` (200) of 5-30 s (uniform, seeded) of espeak-ng speech tiled to length,
or noise where espeak-ng is missing.

Usage (GPU):  python bench/bench_gpu_whisper.py --out bench/results_gpu_whisper_h200.json
Smoke (CPU):  python bench/bench_gpu_whisper.py --tiny --device cpu --num-clips 4 \\
                  --new-tokens 8 --hf-batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from mmcore import Engine, SamplingParams
from mmcore.testing.tiny_whisper import build_tiny_whisper, build_whisper_tokenizer

RATE = 16000
LARGE_V3 = dict(
    vocab_size=51866,
    num_mel_bins=128,
    d_model=1280,
    encoder_layers=32,
    decoder_layers=32,
    encoder_attention_heads=20,
    decoder_attention_heads=20,
    encoder_ffn_dim=5120,
    decoder_ffn_dim=5120,
    max_source_positions=1500,
    max_target_positions=448,
    activation_function="gelu",
)


def write_large_v3(path: str) -> str:
    """A weightless Whisper large-v3 folder: config, generation config, tokenizer, extractor."""
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    tok = build_whisper_tokenizer(base_vocab=50257, languages=tuple(LANGUAGES))
    if len(tok) != LARGE_V3["vocab_size"]:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, large-v3 has 51866")
    ids = tok.convert_tokens_to_ids
    config = WhisperConfig(
        **LARGE_V3,
        pad_token_id=ids("<|endoftext|>"),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|endoftext|>"),
        decoder_start_token_id=ids("<|startoftranscript|>"),
        torch_dtype="bfloat16",
    )
    config.save_pretrained(path)
    gen = GenerationConfig(
        decoder_start_token_id=ids("<|startoftranscript|>"),
        eos_token_id=ids("<|endoftext|>"),
        pad_token_id=ids("<|endoftext|>"),
        is_multilingual=True,
        lang_to_id={f"<|{c}|>": ids(f"<|{c}|>") for c in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"),
        max_length=448,
    )
    gen.save_pretrained(path)
    tok.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(path)
    return path


def make_clips(num: int, seed: int) -> list[np.ndarray]:
    """``num`` clips of 5-30 s: espeak-ng speech tiled to length (noise without espeak-ng)."""
    rng = np.random.default_rng(seed)
    try:
        from mmcore.testing.speech import synthesize_speech

        base = synthesize_speech("the quick brown fox jumps over the lazy dog " * 3, RATE)
    except RuntimeError:
        base = (0.1 * rng.standard_normal(RATE * 10)).astype(np.float32)
    clips = []
    for _ in range(num):
        n = int(rng.uniform(5.0, 30.0) * RATE)
        start = int(rng.integers(0, len(base)))
        clips.append(np.resize(np.roll(base, -start), n).astype(np.float32))
    return clips


def bench_mmcore(path: str, clips: list[np.ndarray], args) -> dict:
    engine = Engine(
        path,
        load_format="dummy" if not args.tiny else "auto",
        device=args.device,
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        disable_log_stats=True,
    )
    prompt = "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>"
    prompts = [
        {
            "encoder_prompt": {"prompt": "", "multi_modal_data": {"audio": (c, RATE)}},
            "decoder_prompt": prompt,
        }
        for c in clips
    ]
    net = engine.model
    head = net.decoder.embed_tokens if net.tied else net.proj_out
    with torch.no_grad():  # timestamp logits 0 (see the module docstring)
        head.weight[_timestamp_begin(path) :] = 0.0
    params = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
    engine.generate(prompts[: min(4, len(prompts))], params, use_tqdm=False)  # warm-up
    _sync(args.device)
    start = time.perf_counter()
    outputs = engine.generate(prompts, params, use_tqdm=False)
    _sync(args.device)
    wall = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    del engine
    return {"wall_s": wall, "generated_tokens": tokens}


def bench_hf(path: str, clips: list[np.ndarray], args) -> dict:
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
        pipeline,
    )

    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else torch.float32
    if args.tiny:
        model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype)
    else:
        with torch.device(args.device):
            model = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(path))
        model = model.to(dtype)
        model.generation_config = model.generation_config.from_pretrained(path)
    model = model.to(args.device).eval()
    with torch.no_grad():  # timestamp logits 0 (see the module docstring)
        model.get_output_embeddings().weight[_timestamp_begin(path) :] = 0.0
    asr = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=WhisperTokenizer.from_pretrained(path),  # the pipeline decodes with it
        feature_extractor=WhisperFeatureExtractor.from_pretrained(path),
        device=torch.device(args.device),
        dtype=dtype,
        batch_size=args.hf_batch_size,
    )
    kwargs = {
        "language": "en",
        "task": "transcribe",
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
    }

    def inputs(some):  # fresh dicts: the pipeline pops their keys
        return [{"raw": c, "sampling_rate": RATE} for c in some]

    asr(inputs(clips[:4]), generate_kwargs=kwargs)  # warm-up
    _sync(args.device)
    start = time.perf_counter()
    asr(inputs(clips), generate_kwargs=kwargs)
    _sync(args.device)
    wall = time.perf_counter() - start
    del asr, model
    return {"wall_s": wall, "batch_size": args.hf_batch_size}


def bench_features(path: str, clips: list[np.ndarray], args) -> dict:
    """mmcore's batched torch STFT on ``--device`` vs HF's extractor (numpy) on the CPU."""
    from transformers import WhisperFeatureExtractor

    from mmcore.multimodal.audio_features import WhisperMelFeatures

    extractor = WhisperFeatureExtractor.from_pretrained(path)
    ours = WhisperMelFeatures.from_hf(extractor)
    ours(clips[:4], device=args.device)  # warm-up (filters, cuFFT plan)
    _sync(args.device)
    start = time.perf_counter()
    mels = ours(clips, device=args.device)
    _sync(args.device)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = extractor(clips, sampling_rate=RATE, return_tensors="pt").input_features
    hf_s = time.perf_counter() - start
    max_diff = float((mels.cpu() - ref).abs().max())
    return {
        "mmcore_s": ours_s,
        "hf_cpu_s": hf_s,
        "speedup": hf_s / ours_s,
        "max_abs_diff": max_diff,
    }


def _timestamp_begin(path: str) -> int:
    from transformers import AutoTokenizer

    return int(AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("<|0.00|>"))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-clips", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per clip")
    parser.add_argument("--max-num-seqs", type=int, default=128)
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="mmcore's token budget per step; the encoder budget (windows encoded per step, "
        "1500 positions each) is the same number (default: the engine's 8192)",
    )
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="a tiny seeded checkpoint (smoke)")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.num_clips < 1 or args.new_tokens < 1 or args.hf_batch_size < 1:
        parser.error("--num-clips, --new-tokens and --hf-batch-size must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    clips = make_clips(args.num_clips, args.seed)
    audio_s = sum(len(c) for c in clips) / RATE
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_whisper(tmp) if args.tiny else write_large_v3(tmp)
        results = {"model": "tiny" if args.tiny else "whisper-large-v3 (dummy weights)"}
        results.update(num_clips=len(clips), audio_s=audio_s, new_tokens=args.new_tokens)
        results["features"] = bench_features(path, clips, args)
        ours = bench_mmcore(path, clips, args)
        ours["audio_s_per_s"] = audio_s / ours["wall_s"]
        results["mmcore"] = ours
        if not args.skip_hf:
            hf = bench_hf(path, clips, args)
            hf["audio_s_per_s"] = audio_s / hf["wall_s"]
            results["hf_pipeline"] = hf
            results["speedup"] = ours["audio_s_per_s"] / hf["audio_s_per_s"]
    if args.device.startswith("cuda"):
        results["device"] = torch.cuda.get_device_name()
    print(json.dumps(results, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
