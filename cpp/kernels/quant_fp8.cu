// Per-token FP8 quantisation in one launch (instead of torch's amax, divide, clamp, divide,
// cast): one CTA per row. Each thread loads up to kVecsPerThread 16-byte vectors of the row at
// once and keeps them in registers (more bytes in flight than one vector a thread; the few rows
// wider than the block's registers re-read the rest), a block reduction gives the scale, and the
// registers are written as e4m3 bytes. The scale is ``amax * (1 / 448)`` and the values
// ``x / scale`` correctly rounded, as torch's CUDA ops round them.
#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>
#include <string>
#include <type_traits>

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

// x / scale correctly rounded. kReciprocal: from r = RN(1 / scale), q = x * r and one remainder
// correction give the IEEE quotient when nothing overflows or underflows (Markstein's theorem),
// which a finite, normal scale of a row whose |x| <= 448 * scale ensures; other rows (an inf or
// NaN input makes the scale inf / NaN) take the full division.
template <bool kReciprocal, typename T, int kWidth>
__device__ __forceinline__ Vec<__nv_fp8_storage_t, kWidth> quantize(const Vec<T, kWidth>& v,
                                                                    float scale, float inv) {
  Vec<__nv_fp8_storage_t, kWidth> q;  // kWidth bytes: one store
#pragma unroll
  for (int k = 0; k < kWidth; ++k) {
    const float x = to_float(v.v[k]);
    float y;
    if constexpr (kReciprocal) {
      const float q0 = __fmul_rn(x, inv);
      const float rem = __fmaf_rn(-q0, scale, x);
      // A zero remainder means q0 is exact; the FMA would turn a -0 quotient into +0.
      y = rem == 0.f ? q0 : __fmaf_rn(rem, inv, q0);
    } else {
      y = __fdiv_rn(x, scale);
    }
    q.v[k] = __nv_cvt_float_to_fp8(y, __NV_SATFINITE, __NV_E4M3);
  }
  return q;
}

constexpr int kVecsPerThread = 4;

template <typename T, int kWidth>
__global__ void __launch_bounds__(1024) per_token_quant_kernel(const PerTokenQuantParams p) {
  using V = Vec<T, kWidth>;
  using Q = Vec<__nv_fp8_storage_t, kWidth>;
  const int64_t row = blockIdx.x;
  const int num_vecs = p.hidden / kWidth;
  const int held = kVecsPerThread * blockDim.x;  // vectors the block keeps in registers
  const auto* x = reinterpret_cast<const V*>(static_cast<const T*>(p.x) + row * p.x_stride);
  auto* out = reinterpret_cast<Q*>(static_cast<__nv_fp8_storage_t*>(p.out) +
                                   row * static_cast<int64_t>(p.hidden));

  V regs[kVecsPerThread];
#pragma unroll
  for (int j = 0; j < kVecsPerThread; ++j) {  // every load issued before the first use
    const int i = threadIdx.x + j * blockDim.x;
    if (i < num_vecs) regs[j] = x[i];
  }
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < kVecsPerThread; ++j) {
    if (threadIdx.x + j * blockDim.x < num_vecs) {
#pragma unroll
      for (int k = 0; k < kWidth; ++k) amax = fmaxf(amax, fabsf(to_float(regs[j].v[k])));
    }
  }
  for (int i = threadIdx.x + held; i < num_vecs; i += blockDim.x) {
    const V v = x[i];
#pragma unroll
    for (int k = 0; k < kWidth; ++k) amax = fmaxf(amax, fabsf(to_float(v.v[k])));
  }
  amax = block_max(amax);
  // torch divides a tensor by a Python scalar as a product with the float reciprocal.
  const float scale = fmaxf(__fmul_rn(amax, 1.f / kFp8Max), p.min_scale);
  if (threadIdx.x == 0) p.scales[row] = scale;
  const float inv = __frcp_rn(scale);
  auto write_row = [&](auto reciprocal) {
    constexpr bool kReciprocal = decltype(reciprocal)::value;
#pragma unroll
    for (int j = 0; j < kVecsPerThread; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < num_vecs) out[i] = quantize<kReciprocal>(regs[j], scale, inv);
    }
    for (int i = threadIdx.x + held; i < num_vecs; i += blockDim.x) {
      out[i] = quantize<kReciprocal>(x[i], scale, inv);
    }
  };
  if (isfinite(scale) && scale >= FLT_MIN)
    write_row(std::true_type{});
  else
    write_row(std::false_type{});
}

template <typename T, int kWidth>
cudaError_t launch_width(const PerTokenQuantParams& p, cudaStream_t stream) {
  const int num_vecs = p.hidden / kWidth;
  const int per_thread = (num_vecs + kVecsPerThread - 1) / kVecsPerThread;
  const int threads = std::min(1024, std::max(32, (per_thread + 31) / 32 * 32));
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
