"""GPU time of the fused elementwise kernels against the unfused torch references.

Run on a GPU with mmcore._kernels built:  ``python bench/bench_fused_ops.py [--dtype bfloat16]``.
Llama-2-7B sizes (hidden 4096, intermediate 11008, 32 heads x 128, q/k as views of a fused qkv
output; the FP8 activation quantiser at both widths). Both sides are captured in a CUDA graph
and timed by CUDA events (median of the replays), so launch overhead stays out. Prints one JSON
line per (op, tokens): microseconds, speedup, bytes the fused kernel must move and its bandwidth
against a device copy's. ``--ops per_token_quant`` runs only the ops named so.
At small T the data sits in L2 between replays: read those rows as latency, not bandwidth.
"""

from __future__ import annotations

import argparse
import json

import torch

from bench_kernels import copy_bandwidth, time_ms
from mmcore.kernels import ops, reference
from mmcore.kernels.quant_ops import per_token_quant_fp8
from mmcore.layers.fp8 import MIN_SCALE

DEV = "cuda"
HIDDEN, INTERMEDIATE, HEADS, HEAD_DIM, MAX_POSITIONS = 4096, 11008, 32, 128, 4096


def cases(num_tokens: int, dtype: torch.dtype, gen: torch.Generator):
    """(name, fused call, reference call, bytes moved) for each op at ``num_tokens``."""
    size = torch.finfo(dtype).bits // 8

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=DEV).to(dtype)

    x, res, w = randn(num_tokens, HIDDEN), randn(num_tokens, HIDDEN), randn(HIDDEN)
    row_bytes = num_tokens * HIDDEN * size
    yield (
        "rms_norm",
        lambda: ops.rms_norm(x, w, 1e-6),
        lambda: reference.rms_norm(x, w, 1e-6),
        2 * row_bytes + HIDDEN * size,
    )
    yield (
        "fused_add_rms_norm",
        lambda: ops.fused_add_rms_norm(x, res, w, 1e-6),
        lambda: reference.fused_add_rms_norm(x, res, w, 1e-6),
        4 * row_bytes + HIDDEN * size,
    )
    gate_up = randn(num_tokens, 2 * INTERMEDIATE)
    yield (
        "silu_and_mul",
        lambda: ops.silu_and_mul(gate_up),
        lambda: reference.silu_and_mul(gate_up),
        3 * num_tokens * INTERMEDIATE * size,
    )
    qkv = randn(num_tokens, 3 * HEADS * HEAD_DIM)
    q = qkv[:, : HEADS * HEAD_DIM].view(num_tokens, HEADS, HEAD_DIM)
    k = qkv[:, HEADS * HEAD_DIM : 2 * HEADS * HEAD_DIM].view(num_tokens, HEADS, HEAD_DIM)
    inv_freq = 1.0 / (1e4 ** (torch.arange(0, HEAD_DIM, 2, device=DEV) / HEAD_DIM))
    cache = reference.rotary_cos_sin_cache(inv_freq, MAX_POSITIONS, 1.0, dtype)
    positions = torch.randint(0, MAX_POSITIONS, (num_tokens,), generator=gen, device=DEV)
    qk_bytes = num_tokens * 2 * HEADS * HEAD_DIM * size
    yield (
        "rotary_embedding",
        lambda: ops.rotary_embedding(positions, q, k, cache),
        lambda: reference.rotary_embedding(positions, q, k, cache),
        2 * qk_bytes + num_tokens * (HEAD_DIM * size + 8),
    )
    for width in (HIDDEN, INTERMEDIATE):  # the inputs of qkv / o / gate_up, and of down
        a = randn(num_tokens, width)
        yield (
            f"per_token_quant_fp8_{width}",
            lambda a=a: per_token_quant_fp8(a, MIN_SCALE),
            lambda a=a: reference.per_token_quant_fp8(a, MIN_SCALE),
            num_tokens * width * (size + 1) + 4 * num_tokens,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tokens", default="1,64,256,8192", help="comma-separated T values")
    parser.add_argument("--ops", default="", help="only ops whose name starts with one of these")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator(device=DEV).manual_seed(0)
    copy_bw = copy_bandwidth()
    device = torch.cuda.get_device_name()
    for num_tokens in (int(t) for t in args.tokens.split(",")):
        for name, fused, unfused, moved in cases(num_tokens, dtype, gen):
            if args.ops and not name.startswith(tuple(args.ops.split(","))):
                continue
            ours_ms = time_ms(fused, reps=50)
            torch_ms = time_ms(unfused, reps=50)
            bandwidth = moved / (ours_ms * 1e-3)
            print(json.dumps({
                "op": name, "tokens": num_tokens, "dtype": args.dtype, "device": device,
                "ours_us": round(ours_ms * 1e3, 2), "torch_us": round(torch_ms * 1e3, 2),
                "speedup": round(torch_ms / ours_ms, 2), "bytes": moved,
                "ours_GBps": round(bandwidth / 1e9, 1),
                "of_copy_bw": round(bandwidth / copy_bw, 3),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
