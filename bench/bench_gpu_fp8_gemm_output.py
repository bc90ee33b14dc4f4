"""The FP8 GEMM's output dtype for a float16 model: float16 written by ``torch._scaled_mm``
against bfloat16 then a cast (what ``fp8_linear`` did before), on LLaVA-1.5-7B's prefill shapes.

Row-wise scales (per token, per output channel) as ``mmcore.layers.fp8.fp8_linear`` uses them;
CUDA-event timings in one process; also prints the largest difference between the two outputs.

Usage (GPU): python bench/bench_gpu_fp8_gemm_output.py
"""

from __future__ import annotations

import torch

from mmcore.layers.fp8 import quantize_rows

# (tokens, in features, out features): qkv, down_proj of a 8,192-token step; one decode-like row
# block past the GEMV's 8 rows.
SHAPES = [(8192, 4096, 12288), (8192, 11008, 4096), (64, 4096, 4096)]


def time_us(fn, reps: int = 50) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU of compute capability >= 8.9")
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| M x K x N | bf16 out + cast us | fp16 out us | speedup | max abs diff |")
    print("|---|---|---|---|---|")
    for m, k, n in SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        x_fp8, x_scale = quantize_rows(x)
        w_fp8, w_scale = quantize_rows(torch.randn(n, k, device="cuda") * 0.02)

        def gemm(out_dtype, x_fp8=x_fp8, x_scale=x_scale, w_fp8=w_fp8, w_scale=w_scale):
            return torch._scaled_mm(
                x_fp8, w_fp8.t(), scale_a=x_scale, scale_b=w_scale.view(1, -1), out_dtype=out_dtype
            )

        cast_us = time_us(lambda: gemm(torch.bfloat16).to(torch.float16))
        direct_us = time_us(lambda: gemm(torch.float16))
        diff = (gemm(torch.float16).float() - gemm(torch.bfloat16).float()).abs().max().item()
        print(
            f"| {m} x {k} x {n} | {cast_us:.1f} | {direct_us:.1f} | {cast_us / direct_us:.2f}x "
            f"| {diff:.4f} |"
        )


if __name__ == "__main__":
    main()
