"""Wave-2 attention kernels on the GPU: head dims 72 / 256 vs torch SDPA, FP8-KV decode vs bf16.

Run on a GPU with mmcore._kernels built::

    python bench/bench_gpu_kernels_wave2.py [--quick] [--out DIR]

Tables (markdown; medians of CUDA-event timings of CUDA-graph replays, baselines in the same run):

- ViT / SigLIP (packed varlen, 729 tokens per image, 16 heads, d 72) vs SDPA: flash when it
  takes the shape, and the fastest torch backend that does.
- Gemma-3-12B shapes (16 q / 8 KV heads, d 256): causal prefill at 1k / 4k / 8k vs the sm80
  kernel (the Hopper kernel off) and SDPA flash (or the best backend).
- Causal prefill over an FP8 KV cache (d 128 and d 64): the Hopper kernel vs the sm80 kernel's FP8
  path vs the bf16 cache.
- Decode batch 1 at 4k / 16k, bf16 KV vs FP8 (e4m3) KV: bytes/s against a device copy's
  bandwidth measured in the run (LLaVA-1.5-7B: 32 / 32 heads, d 128; Gemma-3-12B: 16 / 8, d 256).
- Batched decode (LLaVA-1.5-7B shape, block 16), bf16 KV vs FP8 KV: batch 16 at 4k keys, 64 and
  256 at 700 (an offline run's decode steps), 256 at 2,000.

``--tables`` picks tables by name (vit_d72, prefill_d256, prefill_fp8, decode_fp8,
decode_batched; all by default).

``--out DIR`` also writes the rows as ``DIR/kernels_wave2.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import copy_bandwidth, time_ms  # noqa: E402  (the shared timing helpers)
from mmcore.kernels import ops, reference  # noqa: E402

DEV = "cuda"
DT = torch.bfloat16
FP8 = torch.float8_e4m3fn
BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def sdpa_times(q, k, v, causal: bool) -> dict[str, float]:
    """Milliseconds of each fused SDPA backend that takes these ``[B, H, N, D]`` inputs (the
    unfused math backend only when none does)."""
    times = {}
    for name, backend in BACKENDS.items():
        if name == "math" and times:
            break

        def run(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        try:
            run()
            torch.cuda.synchronize()
        except RuntimeError:
            continue  # this backend does not take the shape / dtype
        try:
            times[name] = time_ms(run)
        except RuntimeError:  # not capturable in a CUDA graph: time eager calls
            torch.cuda.synchronize()
            times[name] = time_ms(run, graph=False)
    return times


def _baseline_cells(times: dict[str, float]) -> tuple[str, str, float]:
    flash = f"{times['flash']:.3f}" if "flash" in times else "n/a"
    best = min(times, key=times.get)
    return flash, f"{times[best]:.3f} ({best})", times[best]


def bench_vit_d72(gen, batches, rows):
    print("\n### ViT, SigLIP-so400m shapes (729 tokens per image, 16 heads, d 72), bf16")
    print("| images | ours ms | ours TFLOP/s | SDPA flash ms | best SDPA ms | speedup vs best |")
    print("|---|---|---|---|---|---|")
    n, h, d = 729, 16, 72
    for b in batches:
        qkv = torch.randn(b * n, 3, h, d, generator=gen, device=DEV).to(DT)
        q, k, v = qkv.unbind(1)
        cu = torch.arange(0, b * n + 1, n, dtype=torch.int32, device=DEV)
        ours = time_ms(lambda q=q, k=k, v=v, cu=cu: ops.varlen_attention(q, k, v, cu, d**-0.5))
        qs, ks, vs = (t.view(b, n, h, d).transpose(1, 2).contiguous() for t in (q, k, v))
        flash, best_cell, best = _baseline_cells(sdpa_times(qs, ks, vs, causal=False))
        flops = 4 * b * n * n * h * d
        print(f"| {b} | {ours:.3f} | {flops / ours / 1e9:.0f} | {flash} | {best_cell} | "
              f"{best / ours:.2f}x |")  # fmt: skip
        rows.append({"table": "vit_d72", "images": b, "ours_ms": ours, "sdpa_best_ms": best})


def bench_prefill_d256(gen, lengths, rows):
    print("\n### Causal prefill, Gemma-3-12B shapes (16 q / 8 KV heads, d 256, block 16), bf16")
    print("| tokens | ours ms | ours TFLOP/s | sm80 kernel ms | SDPA flash ms | best SDPA ms | "
          "speedup vs best |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    hq, hkv, d, bs = 16, 8, 256, 16
    for n in lengths:
        blocks = math.ceil(n / bs)
        kc = torch.randn(blocks, bs, hkv, d, generator=gen, device=DEV).to(DT)
        vc = torch.randn(blocks, bs, hkv, d, generator=gen, device=DEV).to(DT)
        tables = torch.arange(blocks, dtype=torch.int32, device=DEV).view(1, -1)
        q = torch.randn(n, hq, d, generator=gen, device=DEV).to(DT)
        lens = torch.tensor([n], dtype=torch.int32, device=DEV)
        starts = torch.tensor([0, n], dtype=torch.int32, device=DEV)

        def run(q=q, kc=kc, vc=vc, t=tables, lens=lens, s=starts, n=n):
            return ops.paged_attention(q, kc, vc, t, lens, s, d**-0.5, max_query_len=n,
                                       min_query_len=n, max_seq_len=n)  # fmt: skip

        ours = time_ms(run)
        with ops.hopper_attention(False):  # the sm80 kernel (what Hopper ran before)
            sm80 = time_ms(run)
        qs = q.view(1, n, hq, d).transpose(1, 2).contiguous()
        ks = kc.view(1, -1, hkv, d)[:, :n].repeat_interleave(hq // hkv, 2).transpose(1, 2)
        vs = vc.view(1, -1, hkv, d)[:, :n].repeat_interleave(hq // hkv, 2).transpose(1, 2)
        times = sdpa_times(qs, ks.contiguous(), vs.contiguous(), causal=True)
        flash, best_cell, best = _baseline_cells(times)
        flops = 4 * n * n * hq * d / 2
        print(f"| {n} | {ours:.3f} | {flops / ours / 1e9:.0f} | {sm80:.3f} | {flash} | "
              f"{best_cell} | {best / ours:.2f}x |")  # fmt: skip
        rows.append({"table": "prefill_d256", "tokens": n, "ours_ms": ours, "sm80_ms": sm80,
                     "sdpa_best_ms": best})  # fmt: skip


def _paged_prefill_ms(q, tables, lens, starts, scale, key_cache, value_cache, **kw) -> float:
    return time_ms(
        lambda: ops.paged_attention(q, key_cache, value_cache, tables, lens, starts, scale, **kw)
    )


def bench_prefill_fp8(gen, lengths, rows):
    """Causal paged prefill over an FP8 cache: our kernel (Hopper on sm90) vs the sm80 kernel's
    FP8 path vs our kernel over a bf16 cache of the same values."""
    print("\n### Causal prefill over an FP8 (e4m3) KV cache (block 16), bf16 queries")
    print("| shape | tokens | bf16 KV ms | FP8 KV ms | FP8 KV sm80 kernel ms | FP8 vs sm80 kernel | "
          "FP8 / bf16 KV |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    shapes = [("LLaVA-7B 32/32 d128", 32, 32, 128), ("Qwen2.5-7B 28/4 d128", 28, 4, 128),
              ("64/8 d64", 64, 8, 64)]  # fmt: skip
    bs = 16
    for label, hq, hkv, d in shapes:
        for n in lengths:
            blocks = math.ceil(n / bs)
            kc = torch.randn(blocks, bs, hkv, d, generator=gen, device=DEV).to(DT)
            vc = torch.randn(blocks, bs, hkv, d, generator=gen, device=DEV).to(DT)
            scale = torch.full((hkv,), 0.02, device=DEV)
            kf, vf = (reference.quantize_fp8(c.view(-1, hkv, d), scale).view(c.shape)
                      for c in (kc, vc))  # fmt: skip
            tables = torch.arange(blocks, dtype=torch.int32, device=DEV).view(1, -1)
            q = torch.randn(n, hq, d, generator=gen, device=DEV).to(DT)
            lens = torch.tensor([n], dtype=torch.int32, device=DEV)
            starts = torch.tensor([0, n], dtype=torch.int32, device=DEV)
            kw = dict(max_query_len=n, min_query_len=n, max_seq_len=n)
            fp8 = dict(k_scale=scale, v_scale=scale.clone(), **kw)
            args = (q, tables, lens, starts, d**-0.5)
            bf16_ms = _paged_prefill_ms(*args, kc, vc, **kw)
            fp8_ms = _paged_prefill_ms(*args, kf, vf, **fp8)
            with ops.hopper_attention(False):
                sm80_ms = _paged_prefill_ms(*args, kf, vf, **fp8)
            print(f"| {label} | {n} | {bf16_ms:.3f} | {fp8_ms:.3f} | {sm80_ms:.3f} | "
                  f"{sm80_ms / fp8_ms:.2f}x | {bf16_ms / fp8_ms:.2f}x |")  # fmt: skip
            rows.append({"table": "prefill_fp8", "shape": label, "tokens": n,
                         "bf16_ms": bf16_ms, "fp8_ms": fp8_ms, "fp8_sm80_ms": sm80_ms})  # fmt: skip


def _decode_inputs(context, hq, hkv, d, kv_dtype, gen, rotations):
    """Batch-1 decode over ``rotations`` disjoint block tables of one cache (defeats the L2)."""
    bs = 16
    blocks_per_seq = math.ceil(context / bs)
    num_blocks = blocks_per_seq * rotations
    shape = (num_blocks, bs, hkv, d)
    scales = {}
    if kv_dtype == FP8:
        ones = torch.full((hkv,), 0.01, device=DEV)
        scales = {"k_scale": ones, "v_scale": ones.clone()}
        kc = reference.quantize_fp8(
            torch.randn(shape, generator=gen, device=DEV).view(-1, hkv, d), ones
        ).view(shape)
        vc = reference.quantize_fp8(
            torch.randn(shape, generator=gen, device=DEV).view(-1, hkv, d), ones
        ).view(shape)
    else:
        kc = torch.randn(shape, generator=gen, device=DEV).to(DT)
        vc = torch.randn(shape, generator=gen, device=DEV).to(DT)
    perm = torch.randperm(num_blocks, generator=gen, device=DEV).to(torch.int32)
    tables = perm.view(rotations, 1, blocks_per_seq)
    q = torch.randn(1, hq, d, generator=gen, device=DEV).to(DT)
    lens = torch.tensor([context], dtype=torch.int32, device=DEV)
    starts = torch.tensor([0, 1], dtype=torch.int32, device=DEV)
    return (q, kc, vc, tables, lens, starts), scales


def bench_decode_fp8(gen, copy_bw, contexts, rows, shapes):
    print(f"\n### Decode batch 1, bf16 KV vs FP8 (e4m3) KV; copy bandwidth "
          f"{copy_bw / 1e12:.2f} TB/s (read + write)")  # fmt: skip
    print("| model shape | context | KV | ours us | KV GB/s | of copy BW | FP8 speedup |")
    print("|---|---|---|---|---|---|---|")
    for label, hq, hkv, d in shapes:
        for ctx in contexts:
            base_us = None
            for kv_dtype, kv_name in ((DT, "bf16"), (FP8, "fp8")):
                itemsize = torch.empty((), dtype=kv_dtype).element_size()
                kv_bytes = 2 * ctx * hkv * d * itemsize
                rotations = min(64, max(2, math.ceil(512e6 / kv_bytes)))
                (q, kc, vc, tables, lens, starts), scales = _decode_inputs(
                    ctx, hq, hkv, d, kv_dtype, gen, rotations
                )

                def run(q=q, kc=kc, vc=vc, tables=tables, lens=lens, starts=starts, ctx=ctx,
                        scales=scales, d=d):  # fmt: skip
                    for table in tables:  # one call per rotation, each over other blocks
                        ops.paged_attention(q, kc, vc, table, lens, starts, d**-0.5,
                                            max_query_len=1, max_seq_len=ctx, **scales)  # fmt: skip

                ms = time_ms(run, reps=20, calls=rotations)
                bw = kv_bytes / (ms * 1e-3)
                us = ms * 1e3
                speedup = "" if base_us is None else f"{base_us / us:.2f}x"
                base_us = base_us or us
                print(f"| {label} | {ctx} | {kv_name} | {us:.1f} | {bw / 1e9:.0f} | "
                      f"{bw / copy_bw:.0%} | {speedup} |")  # fmt: skip
                rows.append({"table": "decode_fp8", "shape": label, "context": ctx,
                             "kv": kv_name, "us": us, "bytes_per_s": bw,
                             "copy_bytes_per_s": copy_bw})  # fmt: skip


def bench_decode_batched(gen, copy_bw, cases, rows):
    print(f"\n### Batched decode, bf16 KV vs FP8 (e4m3) KV (32 / 32 heads, d 128, block 16); "
          f"copy bandwidth {copy_bw / 1e12:.2f} TB/s")  # fmt: skip
    print("| batch | context | KV | ours us | KV GB/s | of copy BW | FP8 speedup |")
    print("|---|---|---|---|---|---|---|")
    hq = hkv = 32
    d, bs = 128, 16
    for batch, ctx in cases:
        base_us = None
        for kv_dtype, kv_name in ((DT, "bf16"), (FP8, "fp8")):
            blocks = math.ceil(ctx / bs)
            shape = (batch * blocks, bs, hkv, d)  # distinct blocks a sequence: >= 360 MB, past L2
            scales = {}
            kc = torch.randn(shape, generator=gen, device=DEV)
            vc = torch.randn(shape, generator=gen, device=DEV)
            if kv_dtype == FP8:
                scale = torch.full((hkv,), 0.01, device=DEV)
                scales = {"k_scale": scale, "v_scale": scale.clone()}
                kc = reference.quantize_fp8(kc.view(-1, hkv, d), scale).view(shape)
                vc = reference.quantize_fp8(vc.view(-1, hkv, d), scale).view(shape)
            else:
                kc, vc = kc.to(DT), vc.to(DT)
            perm = torch.randperm(batch * blocks, generator=gen, device=DEV).to(torch.int32)
            tables = perm.view(batch, blocks)
            q = torch.randn(batch, hq, d, generator=gen, device=DEV).to(DT)
            lens = torch.full((batch,), ctx, dtype=torch.int32, device=DEV)
            starts = torch.arange(batch + 1, dtype=torch.int32, device=DEV)

            def run(q=q, kc=kc, vc=vc, tables=tables, lens=lens, starts=starts, ctx=ctx,
                    scales=scales):  # fmt: skip
                ops.paged_attention(q, kc, vc, tables, lens, starts, d**-0.5, max_query_len=1,
                                    max_seq_len=ctx, **scales)  # fmt: skip

            us = time_ms(run) * 1e3
            bw = 2 * batch * ctx * hkv * d * kv_dtype.itemsize / (us * 1e-6)
            speedup = "" if base_us is None else f"{base_us / us:.2f}x"
            base_us = base_us or us
            print(f"| {batch} | {ctx} | {kv_name} | {us:.1f} | {bw / 1e9:.0f} | "
                  f"{bw / copy_bw:.0%} | {speedup} |")  # fmt: skip
            rows.append({"table": "decode_batched", "batch": batch, "context": ctx,
                         "kv": kv_name, "us": us, "bytes_per_s": bw,
                         "copy_bytes_per_s": copy_bw})  # fmt: skip
            del kc, vc


TABLES = ("vit_d72", "prefill_d256", "prefill_fp8", "decode_fp8", "decode_batched")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--out", default=None, help="folder for kernels_wave2.json")
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated table names")
    args = parser.parse_args()
    tables = set(args.tables.split(","))
    if tables - set(TABLES):
        parser.error(f"unknown tables {sorted(tables - set(TABLES))}; choose from {TABLES}")
    if not torch.cuda.is_available() or ops._kernels() is None:
        raise SystemExit("needs a CUDA GPU and the built mmcore._kernels")
    gen = torch.Generator(device=DEV).manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows: list[dict] = []
    if "vit_d72" in tables:
        bench_vit_d72(gen, [1, 16] if args.quick else [1, 8, 32, 64], rows)
    if "prefill_d256" in tables:
        bench_prefill_d256(gen, [4096] if args.quick else [1024, 4096, 8192], rows)
    if "prefill_fp8" in tables:
        bench_prefill_fp8(gen, [4096] if args.quick else [1024, 4096, 8192], rows)
    copy_bw = copy_bandwidth() if tables & {"decode_fp8", "decode_batched"} else 0.0
    if "decode_fp8" in tables:
        shapes = [("llava-1.5-7b 32/32 d128", 32, 32, 128), ("gemma-3-12b 16/8 d256", 16, 8, 256)]
        bench_decode_fp8(gen, copy_bw, [4096, 16384], rows, shapes)
    if "decode_batched" in tables:
        cases = [(256, 700)] if args.quick else [(16, 4096), (64, 700), (256, 700), (256, 2000)]
        bench_decode_batched(gen, copy_bw, cases, rows)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "kernels_wave2.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
