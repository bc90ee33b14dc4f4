"""Batch-1 decode attention's fixed costs on a GPU.

For each context length: the paged decode kernel at the split the planner picks and at forced
coarser splits (``ops.SPLIT_MIN_KEY_TILES``), torch SDPA flash over contiguous K/V, a device copy
of the same KV bytes (read + written) and a 16-element ``add_`` (an empty launch), each timed in
a CUDA graph over 16 rotations of cache blocks (more bytes than the L2 keeps). Shapes: LLaVA-7B
(32 / 32 heads) and Qwen2-VL-7B (28 / 4), head dim 128, float16, block 16.

Usage: python bench/probe_gpu_decode_attention.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench_kernels import paged_decode_case, time_ms  # the script folder is on sys.path
from mmcore.kernels import ops

ROTATIONS = 16
CONTEXTS = (16, 64, 128, 256, 673, 1024, 4096)
PLANNER_MIN_TILES = ops.SPLIT_MIN_KEY_TILES
MIN_TILES = (PLANNER_MIN_TILES, 2, 3, 6, 1000)  # 1000 forces one split
DTYPE = torch.float16


def probe(hq: int, hkv: int, d: int, ctx: int, gen: torch.Generator) -> str:
    q, kc, vc, tables, lens, starts = paged_decode_case(1, ctx, hq, hkv, d, 16, gen, ROTATIONS)
    q, kc, vc = q.to(DTYPE), kc.to(DTYPE), vc.to(DTYPE)

    def ours():
        for table in tables:
            ops.paged_attention(q, kc, vc, table, lens, starts, d**-0.5,
                                max_query_len=1, max_seq_len=ctx)  # fmt: skip

    cells = []
    plan = ops._kernels().paged_launch_plan
    for min_tiles in MIN_TILES:
        ops.SPLIT_MIN_KEY_TILES = min_tiles
        splits = plan(1, 1, hq, hkv, 1, 1, ctx, ops._num_sms(0), d, min_tiles)[0]
        cells.append(f"{time_ms(ours, reps=20, calls=ROTATIONS) * 1e3:.1f} ({splits})")
    ops.SPLIT_MIN_KEY_TILES = PLANNER_MIN_TILES

    keys = torch.randn(ROTATIONS, 1, hkv, ctx, d, device="cuda", dtype=DTYPE)
    values = torch.randn_like(keys)
    query = torch.randn(1, hq, 1, d, device="cuda", dtype=DTYPE)

    def sdpa():
        for i in range(ROTATIONS):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                F.scaled_dot_product_attention(query, keys[i], values[i], enable_gqa=hq != hkv)

    src = torch.empty(ROTATIONS, 2 * ctx * hkv * d * 2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    tiny = torch.empty(16, device="cuda")

    def copy():
        for i in range(ROTATIONS):
            dst[i].copy_(src[i])

    def empty_launch():
        for _ in range(ROTATIONS):
            tiny.add_(1)

    others = [time_ms(fn, reps=20, calls=ROTATIONS) * 1e3 for fn in (sdpa, copy, empty_launch)]
    return (
        f"| {hq} / {hkv} | {ctx} | "
        + " | ".join(cells)
        + " | "
        + " | ".join(f"{us:.1f}" for us in others)
        + " |"
    )


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"{torch.cuda.get_device_name()}: us a call (KV splits)")
    print("| heads q / kv | keys | " + " | ".join(f"min {m} tiles" for m in MIN_TILES)
          + " | SDPA flash | copy (rw) | empty launch |")  # fmt: skip
    print("|---" * (5 + len(MIN_TILES)) + "|")
    for hq, hkv in ((32, 32), (28, 4)):
        for ctx in CONTEXTS:
            print(probe(hq, hkv, 128, ctx, gen), flush=True)


if __name__ == "__main__":
    main()
