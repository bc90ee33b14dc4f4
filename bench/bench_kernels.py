"""Benchmarks of the CUDA attention kernels against torch SDPA and the memory roofline.

Run on a GPU with mmcore._kernels built:  ``python bench/bench_kernels.py [--quick]``.
Prints markdown tables (ViT equal sizes, ViT mixed sizes, decode bandwidth, causal prefill);
times are medians of CUDA-event timings after warm-up, baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mmcore.kernels import ops

DEV = "cuda"
DT = torch.bfloat16


def time_ms(fn, warmup: int = 3, reps: int = 30, graph: bool = True, calls: int = 1) -> float:
    """Median milliseconds per call of ``fn`` (which makes ``calls`` calls) over ``reps`` timings.

    With ``graph`` the calls are captured once in a CUDA graph and its replays are timed, so
    host-side launch overhead (Python, op dispatch) stays out of the kernel numbers.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy (read + write counted)."""
    src = torch.empty(1 << 31, dtype=torch.uint8, device=DEV).random_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps=20, graph=False)
    return 2 * (1 << 31) / (ms * 1e-3)


def flash_sdpa(q, k, v, causal=False):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def ours_and_sm80(fn, head_dim):
    """(ms of the kernel ops select, ms of the sm80 kernel or None where that is the same one)."""
    ours = time_ms(fn)
    if not ops.hopper_attention_selected(head_dim):
        return ours, None
    with ops.hopper_attention(False):
        return ours, time_ms(fn)


def _ms(value):
    return "-" if value is None else f"{value:.3f}"


def packed(lens, h, d, gen):
    total = sum(lens)
    qkv = torch.randn(total, 3, h, d, generator=gen, device=DEV).to(DT)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=DEV)
    return qkv.unbind(1), cu


def bench_vit_equal(gen, batches):
    print("\n### ViT, CLIP ViT-L/14-336 shapes (577 tokens, 16 heads, d 64), bf16")
    print(f"(ours: the Hopper kernel: {ops.hopper_attention_selected(64)})")
    print("| images | ours ms | ours TFLOP/s | sm80 kernel ms | SDPA flash ms | SDPA TFLOP/s |"
          " speedup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    n, h, d = 577, 16, 64
    for b in batches:
        (q, k, v), cu = packed([n] * b, h, d, gen)
        flops = 4 * b * n * n * h * d
        ours, sm80 = ours_and_sm80(
            lambda q=q, k=k, v=v, cu=cu: ops.varlen_attention(q, k, v, cu, d**-0.5), d
        )
        qs, ks, vs = (t.reshape(b, n, h, d).transpose(1, 2).contiguous() for t in (q, k, v))
        base = time_ms(lambda qs=qs, ks=ks, vs=vs: flash_sdpa(qs, ks, vs))
        print(f"| {b} | {ours:.3f} | {flops / ours / 1e9:.0f} | {_ms(sm80)} | {base:.3f} | "
              f"{flops / base / 1e9:.0f} | {base / ours:.2f}x |")  # fmt: skip


def bench_vit_mixed(gen, num_images):
    print("\n### ViT, mixed sizes (64-4096 tokens per image, 16 heads, d 80), bf16")
    print("| images | tokens | ours ms | ours TFLOP/s | SDPA padded ms | SDPA looped ms |"
          " vs padded | vs looped |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    h, d = 16, 80
    for count in num_images:
        g = torch.Generator().manual_seed(count)
        lens = [int(64 * 2 ** (6 * torch.rand(1, generator=g).item())) for _ in range(count)]
        (q, k, v), cu = packed(lens, h, d, gen)
        flops = sum(4 * n * n * h * d for n in lens)
        ours = time_ms(lambda q=q, k=k, v=v, cu=cu: ops.varlen_attention(q, k, v, cu, d**-0.5))
        longest = max(lens)
        pad = torch.zeros(count, h, longest, d, dtype=DT, device=DEV)
        padded = [pad.clone() for _ in range(3)]
        slices = [(a, b_) for a, b_ in zip(cu[:-1].tolist(), cu[1:].tolist())]
        for t, dst in zip((q, k, v), padded):
            for i, (a, b_) in enumerate(slices):
                dst[i, :, : b_ - a] = t[a:b_].transpose(0, 1)
        base_pad = time_ms(lambda p=padded: flash_sdpa(*p))
        per_image = [
            tuple(t[a:b_].transpose(0, 1).unsqueeze(0).contiguous() for t in (q, k, v))
            for a, b_ in slices
        ]
        base_loop = time_ms(lambda imgs=per_image: [flash_sdpa(*x) for x in imgs])
        print(f"| {count} | {sum(lens)} | {ours:.3f} | {flops / ours / 1e9:.0f} | "
              f"{base_pad:.3f} | {base_loop:.3f} | {base_pad / ours:.2f}x | "
              f"{base_loop / ours:.2f}x |")  # fmt: skip


def paged_decode_case(batch, context, hq, hkv, d, block_size, gen, rotations):
    """``rotations`` disjoint sets of block tables over one cache (defeats the L2)."""
    blocks_per_seq = math.ceil(context / block_size)
    num_blocks = batch * blocks_per_seq * rotations
    kc = torch.randn(num_blocks, block_size, hkv, d, generator=gen, device=DEV).to(DT)
    vc = torch.randn(num_blocks, block_size, hkv, d, generator=gen, device=DEV).to(DT)
    perm = torch.randperm(num_blocks, generator=gen, device=DEV).to(torch.int32)
    tables = perm.view(rotations, batch, blocks_per_seq)
    q = torch.randn(batch, hq, d, generator=gen, device=DEV).to(DT)
    lens = torch.full((batch,), context, dtype=torch.int32, device=DEV)
    starts = torch.arange(batch + 1, dtype=torch.int32, device=DEV)
    return q, kc, vc, tables, lens, starts


def bench_decode(gen, copy_bw, batches, contexts):
    print(f"\n### Decode (32 q heads / 8 KV heads, d 128, block 16, bf16); copy bandwidth "
          f"{copy_bw / 1e12:.2f} TB/s")  # fmt: skip
    print("| batch | context | ours us | GB/s | of copy BW | splits | >= 4 tiles a split us "
          "| splits |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    hq, hkv, d = 32, 8, 128
    kernels = ops._kernels()
    for b in batches:
        for ctx in contexts:
            kv_bytes = 2 * b * ctx * hkv * d * 2
            rotations = min(64, max(2, math.ceil(512e6 / kv_bytes)))
            q, kc, vc, tables, lens, starts = paged_decode_case(b, ctx, hq, hkv, d, 16, gen,
                                                                rotations)  # fmt: skip

            def run(q=q, kc=kc, vc=vc, tables=tables, lens=lens, starts=starts, ctx=ctx):
                for table in tables:  # one call per rotation, each over other cache blocks
                    ops.paged_attention(q, kc, vc, table, lens, starts, d**-0.5,
                                        max_query_len=1, max_seq_len=ctx)  # fmt: skip

            ms = time_ms(run, reps=20, calls=rotations)
            ops.SPLIT_MIN_KEY_TILES = 4  # the coarser split of before, same run
            coarse_ms = time_ms(run, reps=20, calls=rotations)
            ops.SPLIT_MIN_KEY_TILES = 1
            moved = kv_bytes + 2 * q.numel() * 2 + tables[0].numel() * 4
            plan = kernels.paged_launch_plan
            splits = plan(b, b, hq, hkv, 1, 1, ctx, ops._num_sms(0))[0]
            coarse = plan(b, b, hq, hkv, 1, 1, ctx, ops._num_sms(0), min_tiles_per_split=4)[0]
            bw = moved / (ms * 1e-3)
            print(f"| {b} | {ctx} | {ms * 1e3:.1f} | {bw / 1e9:.0f} | {bw / copy_bw:.0%} | "
                  f"{splits} | {coarse_ms * 1e3:.1f} | {coarse} |")  # fmt: skip


def bench_prefill(gen, cases):
    print("\n### Causal prefill (32 q heads / 8 KV heads, d 128, block 16, bf16)")
    print(f"(ours: the Hopper kernel: {ops.hopper_attention_selected(128)})")
    print("| seqs x tokens | ours ms | ours TFLOP/s | sm80 kernel ms | SDPA flash causal ms |"
          " SDPA TFLOP/s | speedup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    hq, hkv, d, bs = 32, 8, 128, 16
    for b, n in cases:
        blocks = b * math.ceil(n / bs)
        kc = torch.randn(blocks, bs, hkv, d, generator=gen, device=DEV).to(DT)
        vc = torch.randn(blocks, bs, hkv, d, generator=gen, device=DEV).to(DT)
        tables = torch.arange(blocks, dtype=torch.int32, device=DEV).view(b, -1)
        q = torch.randn(b * n, hq, d, generator=gen, device=DEV).to(DT)
        lens = torch.full((b,), n, dtype=torch.int32, device=DEV)
        starts = torch.arange(0, b * n + 1, n, dtype=torch.int32, device=DEV)
        flops = b * 4 * n * n * hq * d / 2
        ours, sm80 = ours_and_sm80(
            lambda q=q, kc=kc, vc=vc, t=tables, lens=lens, s=starts, n=n: ops.paged_attention(
                q, kc, vc, t, lens, s, d**-0.5, max_query_len=n, max_seq_len=n
            ),
            d,
        )
        qs = q.view(b, n, hq, d).transpose(1, 2).contiguous()
        ks = kc.view(b, -1, hkv, d)[:, :n].repeat_interleave(hq // hkv, 2).transpose(1, 2)
        vs = vc.view(b, -1, hkv, d)[:, :n].repeat_interleave(hq // hkv, 2).transpose(1, 2)
        ks, vs = ks.contiguous(), vs.contiguous()
        base = time_ms(lambda qs=qs, ks=ks, vs=vs: flash_sdpa(qs, ks, vs, causal=True))
        print(f"| {b} x {n} | {ours:.3f} | {flops / ours / 1e9:.0f} | {_ms(sm80)} | {base:.3f} | "
              f"{flops / base / 1e9:.0f} | {base / ours:.2f}x |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--only", default="vit,mixed,decode,prefill", help="tables to run")
    args = parser.parse_args()
    only = args.only.split(",")
    gen = torch.Generator(device=DEV).manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if "vit" in only:
        bench_vit_equal(gen, [1, 8, 64] if args.quick else [1, 4, 16, 64])
    if "mixed" in only:
        bench_vit_mixed(gen, [8, 32] if args.quick else [4, 16, 64])
    if "decode" in only:
        bench_decode(gen, copy_bandwidth(), [1, 16, 64], [640, 1024, 4096, 16384])
    if "prefill" in only:
        bench_prefill(gen, [(1, 4096), (4, 2048)] if args.quick else [(1, 1024), (1, 4096), (1, 8192),
                                                                  (1, 16384), (4, 2048)])  # fmt: skip


if __name__ == "__main__":
    main()
