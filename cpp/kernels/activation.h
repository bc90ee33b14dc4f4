// Launcher of SiLU-and-mul, the activation of a fused gate_up projection (HF LlamaMLP numerics).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

struct SiluAndMulParams {
  const void* x = nullptr;  // [num_tokens, 2 * intermediate], last dim contiguous
  int64_t x_stride = 0;     // elements between rows
  void* out = nullptr;      // [num_tokens, intermediate], last dim contiguous
  int64_t out_stride = 0;
  int num_tokens = 0, intermediate = 0;
};

// out = round(round(silu(gate)) * up) with gate = x[:, :I], up = x[:, I:], silu in float32.
// Throws std::invalid_argument on bad arguments, std::runtime_error on a CUDA error.
void launch_silu_and_mul(const SiluAndMulParams& p, DType dtype, cudaStream_t stream);

}  // namespace mmcore::kernels
