// Launcher of the skinny GEMM of batch-1..8 decode: out[M, N] = x[M, K] @ weight[N, K]^T + bias
// for M <= 8, the weight row-major as nn.Linear stores it (memory-bound: each weight byte once).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

// Most rows of x the kernel takes (the n = 8 of its mma tiles).
inline constexpr int kSkinnyGemmMaxM = 8;

// Row-major matrices with contiguous last dims; strides in elements.
struct SkinnyGemmParams {
  const void* x = nullptr;  // [m, k]; 16-byte aligned, x_stride % 8 == 0
  int64_t x_stride = 0;
  const void* weight = nullptr;  // [n, k]; 16-byte aligned, weight_stride % 8 == 0
  int64_t weight_stride = 0;
  const void* bias = nullptr;  // [n], contiguous, or nullptr
  void* out = nullptr;         // [m, n]
  int64_t out_stride = 0;
  int m = 0, n = 0, k = 0;
};

// out = round(sum_k x[m, k] * weight[n, k] + bias[n]): products and sums in float32 (tensor-core
// mma), the bias added in float32, one rounding to the dtype. float16 and bfloat16 only.
// Deterministic (fixed summation order); no allocation or sync, so it can be graph-captured.
// Throws std::invalid_argument on bad arguments (m outside 1..8, k % 8 != 0, misaligned
// pointers or strides, ...), std::runtime_error on a CUDA error.
void launch_skinny_gemm(const SkinnyGemmParams& p, DType dtype, cudaStream_t stream);

}  // namespace mmcore::kernels
