// Matrix-vector products of decode steps over float16 / bfloat16 weights: a few activation rows
// against an [n, k] weight read once from HBM, with no split-K pass (cuBLAS splits k for the
// n = hidden products of batch-1 decode and adds a reduction kernel).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

// Most activation rows the kernel takes.
inline constexpr int kDenseGemvMaxRows = 4;
// Largest k, in 16-byte chunks a thread holds (k <= 8 * kDenseGemvThreads * this).
inline constexpr int kDenseGemvMaxChunksPerThread = 8;
inline constexpr int kDenseGemvThreads = 512;

struct DenseGemvParams {
  const void* x = nullptr;  // [rows, k], last dim contiguous
  int64_t x_stride = 0;
  const void* weight = nullptr;  // [n, k], rows w_stride apart, last dim contiguous
  int64_t w_stride = 0;
  const void* bias = nullptr;  // [n] or null
  void* out = nullptr;         // [rows, n], last dim contiguous
  int64_t out_stride = 0;
  int rows = 0, n = 0, k = 0;
  // Gated MLP epilogue: weight rows are [gate | up] (n even) and out [rows, n / 2] holds
  // silu(gate) * up, each product first rounded to the dtype (as silu_and_mul reads them).
  bool silu_mul = false;
};

// out[r, j] = round(sum_i x[r, i] * w[j, i] + bias[j]), products and sum in float32. All
// tensors in `dtype` (float16 / bfloat16), rows in 1..kDenseGemvMaxRows, k a multiple of 8 and
// at most 8 * kDenseGemvThreads * kDenseGemvMaxChunksPerThread, x rows and weight rows 16-byte
// aligned. With silu_mul, out[r, j] = silu(out'[r, j]) * out'[r, n / 2 + j] of the plain
// product out', rounded as launch_silu_and_mul rounds it. Throws std::invalid_argument on bad
// arguments, std::runtime_error on a CUDA error.
void launch_dense_gemv(const DenseGemvParams& p, DType dtype, cudaStream_t stream);

}  // namespace mmcore::kernels
