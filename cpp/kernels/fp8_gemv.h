// FP8 weight-only matrix-vector products for decode steps: few activation rows against e4m3
// weights with one float32 scale per output channel, the weights read once at full bandwidth.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

// Largest activation row count the kernel takes (more rows go to the W8A8 GEMM).
inline constexpr int kFp8GemvMaxRows = 8;

struct Fp8GemvParams {
  const void* x = nullptr;  // [rows, k] float16 / bfloat16, last dim contiguous
  int64_t x_stride = 0;
  const void* weight = nullptr;         // [n, k] e4m3, contiguous
  const float* weight_scale = nullptr;  // [n]
  const void* bias = nullptr;           // [n] in x's dtype, or null
  void* out = nullptr;                  // [rows, n] in x's dtype, last dim contiguous
  int64_t out_stride = 0;
  int rows = 0, n = 0, k = 0;
};

// out[r, j] = round(round(weight_scale[j] * sum_i x[r, i] * w[j, i]) + bias[j]); the products
// and the sum in float32. rows in 1..kFp8GemvMaxRows, k a multiple of 16, x rows and the
// weight 16-byte aligned. Throws std::invalid_argument on bad arguments, std::runtime_error on a
// CUDA error.
void launch_fp8_gemv(const Fp8GemvParams& p, DType dtype, cudaStream_t stream);

}  // namespace mmcore::kernels
