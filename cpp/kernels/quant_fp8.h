// Launcher of the per-token (per-row) FP8 e4m3 quantiser that runs before every W8A8 GEMM.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

// Rows of a [num_tokens, hidden] activation; last dims contiguous, row strides in elements.
struct PerTokenQuantParams {
  const void* x = nullptr;  // float16 / bfloat16 / float32
  int64_t x_stride = 0;
  void* out = nullptr;      // e4m3 bytes [num_tokens, hidden], contiguous rows of `hidden`
  float* scales = nullptr;  // [num_tokens] float32
  int num_tokens = 0, hidden = 0;
  float min_scale = 0.f;  // floor of a scale (an all-zero row would divide by zero)
};

// scale[r] = max(max|x[r]| * (1 / 448), min_scale) (float32, as torch divides by a scalar);
// out[r] = e4m3(x[r] / scale[r]), rounded to nearest even, saturated to +-448.
// Bit for bit torch's `amax / 448`, `.clamp(min)`, `(x / scale).to(float8_e4m3fn)`.
// Throws std::invalid_argument on bad arguments, std::runtime_error on a CUDA error.
void launch_per_token_quant_fp8(const PerTokenQuantParams& p, DType dtype, cudaStream_t stream);

}  // namespace mmcore::kernels
