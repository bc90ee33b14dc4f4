// W8A16 GEMV for decode: each warp owns kRowsPerWarp output channels and walks K in 16-byte
// chunks of their e4m3 weights (a lane reads 16 weights of a row per chunk, so a warp reads
// 512 contiguous bytes), two chunks in flight per iteration; the activation rows (at most
// kFp8GemvMaxRows, a few KB) are re-read from L1 for each weight row. Weights widen to float
// through half (exact for e4m3), products and sums are float32, and a warp reduction gives
// each output. Only the weight bytes come from HBM: for a [1, 4096] x [11008, 4096] product that
// is half of a bfloat16 weight's bytes.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <string>

#include "kernels/elementwise_utils.cuh"
#include "kernels/fp8_gemv.h"

namespace mmcore::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 2;
constexpr int kChunk = 16;               // weights (bytes) per lane per chunk
constexpr int kWarpChunk = 32 * kChunk;  // K elements a warp covers per chunk
constexpr int kChunksInFlight = 2;

// 16 e4m3 values -> 16 floats.
__device__ __forceinline__ void widen16(const uint4& raw, float (&w)[16]) {
  const auto* pairs = reinterpret_cast<const __nv_fp8x2_storage_t*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const __half2 h = __nv_cvt_fp8x2_to_halfraw2(pairs[i], __NV_E4M3);
    const float2 f = __half22float2(h);
    w[2 * i] = f.x;
    w[2 * i + 1] = f.y;
  }
}

template <typename T, int kRows>
__global__ void __launch_bounds__(kWarps * 32) fp8_gemv_kernel(const Fp8GemvParams p) {
  using V = Vec<T, 8>;  // 16 bytes of activations
  const int lane = threadIdx.x & 31;
  const int first = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * kRowsPerWarp;
  if (first >= p.n) return;
  const auto* weight = static_cast<const uint8_t*>(p.weight);

  float acc[kRowsPerWarp][kRows];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[j][r] = 0.f;
  }

  auto accumulate = [&](int j, int64_t k0, const uint4& raw) {
    float w[16];
    widen16(raw, w);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const auto* x = reinterpret_cast<const V*>(static_cast<const T*>(p.x) + r * p.x_stride + k0);
      const V lo = x[0], hi = x[1];
      float s = acc[j][r];
#pragma unroll
      for (int e = 0; e < 8; ++e) s = fmaf(to_float(lo.v[e]), w[e], s);
#pragma unroll
      for (int e = 0; e < 8; ++e) s = fmaf(to_float(hi.v[e]), w[8 + e], s);
      acc[j][r] = s;
    }
  };

  for (int64_t base = static_cast<int64_t>(lane) * kChunk; base < p.k;
       base += static_cast<int64_t>(kWarpChunk) * kChunksInFlight) {
    uint4 raw[kChunksInFlight][kRowsPerWarp];
    // Issue every load of this iteration before the first use.
#pragma unroll
    for (int c = 0; c < kChunksInFlight; ++c) {
      const int64_t k0 = base + static_cast<int64_t>(c) * kWarpChunk;
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        const int row = first + j;
        raw[c][j] =
            (k0 < p.k && row < p.n)
                ? *reinterpret_cast<const uint4*>(weight + static_cast<int64_t>(row) * p.k + k0)
                : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int c = 0; c < kChunksInFlight; ++c) {
      const int64_t k0 = base + static_cast<int64_t>(c) * kWarpChunk;
      if (k0 >= p.k) break;
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) accumulate(j, k0, raw[c][j]);
    }
  }

#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[j][r] = warp_sum(acc[j][r]);
  }
  if (lane != 0) return;
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    const int col = first + j;
    if (col >= p.n) break;
    const float scale = p.weight_scale[col];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      // As the torch path: the product rounded to T, then the bias added and rounded.
      float o = round_to<T>(acc[j][r] * scale);
      if (p.bias != nullptr) o = o + to_float(static_cast<const T*>(p.bias)[col]);
      static_cast<T*>(p.out)[r * p.out_stride + col] = from_float<T>(o);
    }
  }
}

template <typename T, int kRows>
cudaError_t launch_rows(const Fp8GemvParams& p, cudaStream_t stream) {
  const int per_block = kWarps * kRowsPerWarp;
  const int blocks = (p.n + per_block - 1) / per_block;
  fp8_gemv_kernel<T, kRows><<<blocks, kWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_dtype(const Fp8GemvParams& p, cudaStream_t stream) {
  switch (p.rows) {
    case 1:
      return launch_rows<T, 1>(p, stream);
    case 2:
      return launch_rows<T, 2>(p, stream);
    case 3:
      return launch_rows<T, 3>(p, stream);
    case 4:
      return launch_rows<T, 4>(p, stream);
    case 5:
      return launch_rows<T, 5>(p, stream);
    case 6:
      return launch_rows<T, 6>(p, stream);
    case 7:
      return launch_rows<T, 7>(p, stream);
    case 8:
      return launch_rows<T, 8>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

void launch_fp8_gemv(const Fp8GemvParams& p, DType dtype, cudaStream_t stream) {
  const std::string n = "fp8_gemv";
  require(dtype == DType::kFloat16 || dtype == DType::kBFloat16,
          n + ": activations must be float16 or bfloat16");
  require(p.rows >= 1 && p.rows <= kFp8GemvMaxRows, n + ": rows must be in 1.." +
                                                        std::to_string(kFp8GemvMaxRows) + ", got " +
                                                        std::to_string(p.rows));
  require(p.n > 0 && p.k > 0 && p.k % kChunk == 0,
          n + ": n must be positive and k a positive multiple of 16, got n " + std::to_string(p.n) +
              ", k " + std::to_string(p.k));
  require(p.x && p.weight && p.weight_scale && p.out, n + ": null device pointer");
  require(aligned16(p.x) && aligned16(p.weight) && p.x_stride % 8 == 0 && p.x_stride >= p.k &&
              p.out_stride >= p.n,
          n + ": x rows and the weight must be 16-byte aligned (x stride a multiple of 8)");
  check_launch(dtype == DType::kFloat16 ? launch_dtype<__half>(p, stream)
                                        : launch_dtype<__nv_bfloat16>(p, stream),
               "fp8_gemv");
}

}  // namespace mmcore::kernels
