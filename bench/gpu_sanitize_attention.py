"""Small attention launches for NVIDIA compute-sanitizer (memcheck, synccheck, racecheck).

Paged prefill (TMA and cp.async K/V paths: blocks of 16 and 24; Q by TMA where the GQA group
divides 128 and by cp.async for 7 heads a KV head; image spans; 40 uneven sequences, so persistent
CTAs take many items in turn), packed (ViT) launches, and FP8 (e4m3) caches, each checked against
the torch reference so a run also shows the results stayed right under the tool. ``--decode``
makes every sequence a one-token decode (the decode variants; at head dim 128 over FP8 the
register-converting kernel of attention_decode_fp8.cuh), a few of them thousands of keys long.

Usage (GPU)::

    compute-sanitizer --tool memcheck --kernel-name kns=attention_sm90 \\
        python bench/gpu_sanitize_attention.py [--dims 64,72,80,128,256] [--fp8]
    compute-sanitizer --tool racecheck --kernel-name kns=attention_decode_fp8 \\
        python bench/gpu_sanitize_attention.py --dims 128 --fp8 --decode
"""

from __future__ import annotations

import argparse

import torch

from mmcore.kernels import ops, reference
from mmcore.testing.attention_batches import random_packed_qkv, random_paged_batch, span_bounds

FP8 = torch.float8_e4m3fn


def paged(
    d: int, block_size: int, hq: int, hkv: int, fp8: bool, decode: bool, gen: torch.Generator
) -> float:
    lens = torch.randint(1, 600, (40,), generator=gen).tolist()
    if decode:
        lens[:3] = [3000, 2049, 64]  # several tiles a CTA, and one exact 64-key tile
    num_q = [1 if decode else max(1, n // 2) for n in lens]
    spans = [
        [(n - q, n - q + 20)] if i % 5 == 0 and not decode else []
        for i, (n, q) in enumerate(zip(lens, num_q))
    ]
    kv_dtype = {"kv_dtype": FP8} if fp8 else {}
    args, scales = random_paged_batch(
        lens, num_q, hq, hkv, d, block_size, torch.bfloat16, seed=d, qkv_slice=True, **kv_dtype
    )
    scales = scales if fp8 else {}
    until = span_bounds(lens, num_q, spans)
    out = ops.paged_attention(*args, d**-0.5, -1, until, **scales)
    ref = reference.paged_attention(*args, d**-0.5, -1, until, **scales)
    return (out.float() - ref.float()).abs().max().item()


def packed(d: int) -> float:
    (q, k, v), cu = random_packed_qkv([577] * 30 + [1, 130, 900], 16, d, torch.bfloat16, seed=d)
    out = ops.varlen_attention(q, k, v, cu, d**-0.5)
    ref = reference.varlen_attention(q, k, v, cu, d**-0.5)
    return (out.float() - ref.float()).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", default="64,72,80,128,256")
    parser.add_argument("--fp8", action="store_true", help="FP8 caches (head dims 64 / 128)")
    parser.add_argument("--decode", action="store_true", help="one query token a sequence")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    for d in (int(x) for x in args.dims.split(",")):
        for block_size, hq, hkv in ((16, 16, 4), (24, 28, 4)):
            err = paged(d, block_size, hq, hkv, args.fp8, args.decode, gen)
            kind = f"paged{' fp8' if args.fp8 else ''}{' decode' if args.decode else ''}"
            print(f"{kind} d{d} block {block_size}: max err {err:.4f}")
        if not args.fp8 and not args.decode:
            print(f"packed d{d}: max err {packed(d):.4f}")
    torch.cuda.synchronize()
    print("done")


if __name__ == "__main__":
    main()
