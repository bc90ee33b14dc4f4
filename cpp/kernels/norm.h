// Launchers of RMSNorm and of the residual add fused with it (HF LlamaRMSNorm numerics).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

// Rows of [num_tokens, hidden] tensors; last dims contiguous, row strides in elements.
struct RmsNormParams {
  const void* x = nullptr;
  int64_t x_stride = 0;
  const void* residual = nullptr;  // fused add only
  int64_t residual_stride = 0;
  const void* weight = nullptr;  // [hidden], contiguous, same dtype as x
  void* out = nullptr;
  int64_t out_stride = 0;
  void* summed = nullptr;  // fused add only: receives residual + x
  int64_t summed_stride = 0;
  int num_tokens = 0, hidden = 0;
  float eps = 0.f;
};

// out = round(weight * round(x * rsqrt(mean(x^2) + eps))), the mean and the product in float32.
// Throws std::invalid_argument on bad arguments, std::runtime_error on a CUDA error.
void launch_rms_norm(const RmsNormParams& p, DType dtype, cudaStream_t stream);

// summed = round(residual + x); out = rms_norm(summed). out and summed must not alias inputs.
void launch_fused_add_rms_norm(const RmsNormParams& p, DType dtype, cudaStream_t stream);

}  // namespace mmcore::kernels
