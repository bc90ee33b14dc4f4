// Per-token FP8 quantisation in one launch (instead of torch's amax, divide, clamp, divide,
// cast): one CTA per row; pass 1 takes the row's absolute maximum (16-byte vectors when rows
// are aligned), a block reduction gives the scale, pass 2 re-reads the row (from L1/L2) and
// writes e4m3 bytes. The scale is ``amax * (1 / 448)`` and the values ``x / scale`` (IEEE), as
// torch's CUDA ops round them.
#include <cuda_fp8.h>

#include <algorithm>
#include <string>

#include "kernels/elementwise_utils.cuh"
#include "kernels/quant_fp8.h"

namespace mmcore::kernels {
namespace {

constexpr float kFp8Max = 448.f;

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Maximum of v over the block (blockDim.x a multiple of 32); every thread gets it.
__device__ __forceinline__ float block_max(float v) {
  __shared__ float warp_maxes[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  if (lane == 0) warp_maxes[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? warp_maxes[lane] : 0.f;
    v = warp_max(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

template <typename T, int kWidth>
__global__ void __launch_bounds__(1024) per_token_quant_kernel(const PerTokenQuantParams p) {
  using V = Vec<T, kWidth>;
  const int64_t row = blockIdx.x;
  const int num_vecs = p.hidden / kWidth;
  const auto* x = reinterpret_cast<const V*>(static_cast<const T*>(p.x) + row * p.x_stride);
  auto* out = static_cast<__nv_fp8_storage_t*>(p.out) + row * static_cast<int64_t>(p.hidden);

  float amax = 0.f;
  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const V v = x[i];
#pragma unroll
    for (int k = 0; k < kWidth; ++k) amax = fmaxf(amax, fabsf(to_float(v.v[k])));
  }
  amax = block_max(amax);
  // torch divides a tensor by a Python scalar as a product with the float reciprocal.
  const float scale = fmaxf(__fmul_rn(amax, 1.f / kFp8Max), p.min_scale);
  if (threadIdx.x == 0) p.scales[row] = scale;

  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const V v = x[i];
    Vec<__nv_fp8_storage_t, kWidth> q;  // kWidth bytes: one store
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      q.v[k] = __nv_cvt_float_to_fp8(__fdiv_rn(to_float(v.v[k]), scale), __NV_SATFINITE, __NV_E4M3);
    }
    reinterpret_cast<Vec<__nv_fp8_storage_t, kWidth>*>(out)[i] = q;
  }
}

template <typename T, int kWidth>
cudaError_t launch_width(const PerTokenQuantParams& p, cudaStream_t stream) {
  const int num_vecs = p.hidden / kWidth;
  const int threads = std::min(1024, std::max(32, (num_vecs + 31) / 32 * 32));
  per_token_quant_kernel<T, kWidth><<<p.num_tokens, threads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

void launch_per_token_quant_fp8(const PerTokenQuantParams& p, DType dtype, cudaStream_t stream) {
  require(valid_dtype(dtype), "per_token_quant_fp8: dtype must be float32, float16 or bfloat16");
  require(p.num_tokens >= 0, "per_token_quant_fp8: negative num_tokens");
  require(p.hidden > 0,
          "per_token_quant_fp8: hidden size must be positive, got " + std::to_string(p.hidden));
  require(p.x_stride >= p.hidden, "per_token_quant_fp8: x row stride must be >= hidden");
  if (p.num_tokens == 0) return;
  const cudaError_t err = dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int kWidth = kVecWidth<T>;
    const bool vectorized = p.hidden % kWidth == 0 && aligned16(p.x) && p.x_stride % kWidth == 0;
    return vectorized ? launch_width<T, kWidth>(p, stream) : launch_width<T, 1>(p, stream);
  });
  check_launch(err, "per_token_quant_fp8");
}

}  // namespace mmcore::kernels
