"""Structured-output overhead on a GPU: the same 256 concurrent requests with and without a JSON
schema, throughput ratio measured in one run.

Model: LLaVA-1.5-7B architecture with random weights (``load_format="dummy"``), one 336x336
image + 64 text tokens per request, ``--output-len`` tokens each (ignore_eos). The schema (an
array of at least 40 objects with enums, numbers, nested objects and bounded strings) cannot be
completed within the output length, so every sampled token of the constrained run went through
the grammar: bitmask filled on the host while the device runs the forward, applied on the device.
The CUDA defaults are used (decode CUDA graphs, overlapped scheduling).

Usage: python bench/bench_gpu_structured_outputs.py --out DIR  [--output-len 128 --repeats 2]
CPU smoke run (tiny model, no GPU): python bench/bench_gpu_structured_outputs.py --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from mmcore import Engine, SamplingParams, StructuredOutputsParams

SCHEMA = {
    "type": "array",
    "minItems": 40,
    "items": {
        "type": "object",
        "properties": {
            "label": {"enum": ["cat", "dog", "car", "tree", "person"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "box": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer"},
                    "y": {"type": "integer"},
                    "w": {"type": "integer"},
                    "h": {"type": "integer"},
                },
                "required": ["x", "y", "w", "h"],
            },
            "note": {"type": "string", "maxLength": 16},
        },
        "required": ["label", "confidence", "box", "note"],
    },
}


class HostMaskTimer:
    """Host seconds spent filling grammar bitmasks (Engine._host_masks) and number of calls."""

    def __init__(self, engine: Engine) -> None:
        self.seconds, self.calls = 0.0, 0
        self._engine, self._fill = engine, engine._host_masks
        engine._host_masks = self._timed

    def _timed(self, launched):
        start = time.perf_counter()
        result = self._fill(launched)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return result

    def close(self) -> dict:
        self._engine._host_masks = self._fill
        return {
            "mask_calls": self.calls,
            "mask_ms_per_call": 1e3 * self.seconds / max(1, self.calls),
        }


def measure(engine: Engine, requests: list, output_len: int, schema: dict | None) -> dict:
    """Throughput of one generate() over all requests (all admitted at once)."""
    constraint = StructuredOutputsParams(json=schema) if schema is not None else None
    # Greedy: random rows draw their noise on the host (per-request CPU generators), which would
    # weigh on both runs alike and hide the grammar's own cost.
    params = SamplingParams(
        temperature=0.0,
        max_tokens=output_len,
        ignore_eos=True,
        structured_outputs=constraint,
    )
    timer = HostMaskTimer(engine)
    if engine.runner.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = engine.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    num_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    row = {
        "schema": schema is not None,
        "num_requests": len(requests),
        "elapsed_s": elapsed,
        "out_tok_per_s": num_tokens / elapsed,
        "req_per_s": len(requests) / elapsed,
        **timer.close(),
    }
    if schema is not None:
        # Still inside the grammar after output_len tokens: every output is a prefix of a
        # valid document; it must at least open the array of objects.
        row["all_start_like_the_schema"] = all(
            o.outputs[0].text.lstrip().startswith("[") for o in outputs
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on a tiny LLaVA")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from mmcore.testing.tiny_checkpoints import build_tiny_llava

            path = build_tiny_llava(os.path.join(tmp, "tiny"))
            engine = Engine(path, max_num_seqs=args.num_requests)
            image_size = 32
        else:
            from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

            path = write_dummy_checkpoint(args.model, os.path.join(tmp, args.model))
            engine = Engine(
                path, load_format="dummy", device="cuda", max_num_seqs=args.num_requests
            )
            image_size = 336
        from bench_gpu_offline import make_requests  # the script folder is on sys.path

        image_id = engine.tokenizer.convert_tokens_to_ids("<image>")

        def requests(num: int, seed: int) -> list:
            made = make_requests(num, 8 if args.tiny else 64, image_size, seed)
            if args.tiny:  # the tiny tokenizer's ids differ from LLaVA-HF's
                for r in made:
                    ids = r["prompt_token_ids"]
                    r["prompt_token_ids"] = [1, image_id] + [5 + t % 200 for t in ids[2:]]
            return made

        for schema in (None, SCHEMA):  # warm-up: kernels, graphs, grammar compile
            measure(engine, requests(8, 1), 8, schema)
        rows = []
        for repeat in range(args.repeats):
            # Fresh pictures for every run (a repeat would hit the processor, encoder and prefix
            # caches and flatter the second), and the order alternates between repeats.
            order = (None, SCHEMA) if repeat % 2 == 0 else (SCHEMA, None)
            for schema in order:
                seed = 100 + 2 * repeat + (schema is not None)
                row = measure(engine, requests(args.num_requests, seed), args.output_len, schema)
                row["repeat"] = repeat
                rows.append(row)
                print("structured", json.dumps(row), flush=True)
    plain = [r["out_tok_per_s"] for r in rows if not r["schema"]]
    constrained = [r["out_tok_per_s"] for r in rows if r["schema"]]
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": "tiny" if args.tiny else args.model,
        "output_len": args.output_len,
        "rows": rows,
        "throughput_ratio": (sum(constrained) / len(constrained)) / (sum(plain) / len(plain)),
    }
    print("throughput ratio (schema / none):", round(result["throughput_ratio"], 3))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_gpu_structured_outputs.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
