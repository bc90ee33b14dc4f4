"""Where a CPU step's time goes on a tiny LLaVA: profile Engine.generate and sum the time of
the step's parts (scheduler, runner input preparation, encoder, LM forward, attention, sampler,
detokenizer, output objects).

    python bench/profile_cpu_step.py --num-requests 32 --max-tokens 32
    OMP_NUM_THREADS=1 python bench/profile_cpu_step.py --bench-model --num-requests 64 --max-tokens 64

``--bench-model`` profiles the checkpoint ``bench_vs_vllm_cpu.py`` compares with vLLM (head dim 64,
4 layers); the default is the tests' tiny LLaVA. Parts nest (the LM forward holds the attention,
the attention plan and the KV write; apply holds the detokenizer and the output objects).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time

from PIL import Image
from skimage import data as skdata

from mmcore import Engine, SamplingParams

# Functions whose inclusive time stands for one part of a step (file suffix, function name).
_PARTS = {
    "whole step (Engine.step)": [("engine.py", "step")],
    "apply (core update, detok, outputs)": [("engine.py", "_apply")],
    "runner input prep": [
        ("runner.py", "_input_ids"),
        ("runner.py", "_attention_metadata"),
        ("runner.py", "_input_embeds"),
    ],
    "encoder": [("runner.py", "_run_encoder")],
    "runner forward (encoder + LM)": [("runner.py", "forward")],
    "paged attention (CPU)": [("cpu.py", "paged_attention")],
    "  of which the step's attention plan": [("cpu_plan.py", "plan_attention")],
    "KV cache write": [("attention.py", "write_kv")],
    "rotary embedding": [("rotary.py", "forward")],
    "RMS norms": [("norm.py", "forward")],
    "sampler": [("runner.py", "sample")],
    "detokenizer": [("detokenizer.py", "append")],
    "output objects": [("request_tracker.py", "to_output")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: a tiny LLaVA built here)")
    parser.add_argument(
        "--bench-model",
        action="store_true",
        help="build the tiny LLaVA of bench_vs_vllm_cpu.py (head dim 64) instead",
    )
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    model = args.model
    if model is None and args.bench_model:
        from bench_vs_vllm_cpu import build_checkpoint  # this folder: on sys.path as the script's

        model = build_checkpoint(tempfile.mkdtemp(prefix="bench_llava_"))
    elif model is None:
        from mmcore.testing.tiny_checkpoints import build_tiny_llava

        model = build_tiny_llava(tempfile.mkdtemp(prefix="tiny_llava_"), seed=0)
    engine = Engine(model, device="cpu", seed=0, disable_log_stats=True)
    photo = Image.fromarray(skdata.astronaut()).convert("RGB")
    prompts = [
        {
            "prompt": f"USER: <image>\nQuestion {i} about this picture?\nASSISTANT:",
            "multi_modal_data": {"image": photo},
        }
        for i in range(args.num_requests)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
    engine.generate(prompts[:2], params, use_tqdm=False)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    engine.generate(prompts, params, use_tqdm=False)
    profiler.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    inclusive: dict[tuple[str, str], float] = {}
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        key = (filename.rsplit("/", 1)[-1], name)
        inclusive[key] = inclusive.get(key, 0.0) + ct
    print(f"{args.num_requests} requests x {args.max_tokens} tokens: {wall:.2f} s wall")
    for part, keys in _PARTS.items():
        seconds = sum(inclusive.get(k, 0.0) for k in keys)
        print(f"  {part:36s} {seconds:7.3f} s")
    stats.sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
