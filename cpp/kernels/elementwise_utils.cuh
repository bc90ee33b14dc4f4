// Helpers shared by the elementwise kernels (norm.cu, activation.cu, rotary.cu): 16-byte
// vectors, float conversions that round like torch's casts, a block-wide sum (launch checks:
// launch_utils.h).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/launch_utils.h"

namespace mmcore::kernels {

// kWidth elements loaded and stored as one access (16 bytes when kWidth = kVecWidth<T>).
template <typename T, int kWidth>
struct alignas(sizeof(T) * kWidth) Vec {
  T v[kWidth];
};

// Elements of T per 16-byte vector.
template <typename T>
inline constexpr int kVecWidth = static_cast<int>(16 / sizeof(T));

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round-to-nearest-even, as torch's float -> half/bfloat16 casts.
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// x rounded to T and widened back: what one torch op with a T output does to its float result.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? warp_sums[lane] : 0.f;
    v = warp_sum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// Grid rows cover the tokens with a grid-stride loop beyond this.
inline constexpr int kMaxGridY = 65535;

}  // namespace mmcore::kernels
