// RMSNorm and residual add + RMSNorm: one CTA per row. Pass 1 loads the row (16-byte vectors
// when every row is aligned, else scalars), adds the residual and sums the squares; the first
// kCachedVecs vectors of each thread stay in registers for pass 2, which scales them and
// multiplies by the weight (longer rows re-read the rest from L1/L2). Every product and sum is
// rounded where torch's op-by-op HF module rounds it (__fmul_rn/__fadd_rn keep nvcc from
// contracting them into FMAs).
#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/elementwise_utils.cuh"
#include "kernels/norm.h"
#include "kernels/pdl.cuh"

namespace mmcore::kernels {
namespace {

constexpr int kCachedVecs = 4;  // vectors per thread kept in registers between the passes

template <typename T, int kWidth, bool kAdd>
__global__ void __launch_bounds__(1024) rms_norm_kernel(const RmsNormParams p, float inv_hidden) {
  pdl_wait();  // reads the previous kernel's output
  pdl_launch_dependents();
  using V = Vec<T, kWidth>;
  const int64_t row = blockIdx.x;
  const int num_vecs = p.hidden / kWidth;
  const auto* x = reinterpret_cast<const V*>(static_cast<const T*>(p.x) + row * p.x_stride);
  const auto* weight = static_cast<const V*>(p.weight);
  auto* out = reinterpret_cast<V*>(static_cast<T*>(p.out) + row * p.out_stride);
  const V* residual = nullptr;
  V* summed = nullptr;
  if constexpr (kAdd) {
    residual =
        reinterpret_cast<const V*>(static_cast<const T*>(p.residual) + row * p.residual_stride);
    summed = reinterpret_cast<V*>(static_cast<T*>(p.summed) + row * p.summed_stride);
  }

  // round(residual + x), which is also the fused op's second output.
  auto add_residual = [&](int i, V& v, const V& r) {
    if constexpr (kAdd) {
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        v.v[k] = from_float<T>(__fadd_rn(to_float(r.v[k]), to_float(v.v[k])));
      }
      summed[i] = v;
    }
  };
  auto sum_squares = [](const V& v) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const float f = to_float(v.v[k]);
      s = __fadd_rn(s, __fmul_rn(f, f));
    }
    return s;
  };
  // y = round(v * scale), out = round(weight * y).
  auto normalize = [](const V& v, const V& w, float scale) {
    V o;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const float y = round_to<T>(__fmul_rn(to_float(v.v[k]), scale));
      o.v[k] = from_float<T>(__fmul_rn(to_float(w.v[k]), y));
    }
    return o;
  };

  // Every load of a phase is issued before its first store: the compiler cannot prove that
  // the outputs do not alias the inputs, so interleaving would serialize the loads.
  V cached[kCachedVecs], other[kCachedVecs];
#pragma unroll
  for (int j = 0; j < kCachedVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < num_vecs) {
      cached[j] = x[i];
      if constexpr (kAdd) other[j] = residual[i];
    }
  }
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kCachedVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < num_vecs) {
      add_residual(i, cached[j], other[j]);
      sum += sum_squares(cached[j]);
    }
  }
  for (int i = threadIdx.x + kCachedVecs * blockDim.x; i < num_vecs; i += blockDim.x) {
    V v = x[i];
    if constexpr (kAdd) {
      const V r = residual[i];
      add_residual(i, v, r);
    }
    sum += sum_squares(v);
  }
  sum = block_sum(sum);
  // torch: mean = sum * (1/H) (its MeanOps factor), then rsqrt(mean + eps) with ::rsqrt(float).
  const float scale = rsqrtf(__fadd_rn(__fmul_rn(sum, inv_hidden), p.eps));

#pragma unroll
  for (int j = 0; j < kCachedVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < num_vecs) other[j] = weight[i];
  }
#pragma unroll
  for (int j = 0; j < kCachedVecs; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < num_vecs) out[i] = normalize(cached[j], other[j], scale);
  }
  // Rows longer than the register cache: re-read (summed was written by this same thread).
  for (int i = threadIdx.x + kCachedVecs * blockDim.x; i < num_vecs; i += blockDim.x) {
    V v;
    if constexpr (kAdd) {
      v = summed[i];
    } else {
      v = x[i];
    }
    const V w = weight[i];
    out[i] = normalize(v, w, scale);
  }
}

int round_up(int n, int multiple) { return (n + multiple - 1) / multiple * multiple; }

template <typename T, int kWidth, bool kAdd>
cudaError_t launch_width(const RmsNormParams& p, cudaStream_t stream) {
  const int num_vecs = p.hidden / kWidth;
  int threads = p.num_tokens < 256 ? 1024 : 256;  // few rows: spread each over more warps
  threads =
      std::max(threads, std::min(1024, round_up((num_vecs + kCachedVecs - 1) / kCachedVecs, 32)));
  threads = std::min(threads, round_up(num_vecs, 32));
  // torch's mean factor, float(rows) / float(rows * hidden): 1/hidden rounded to float.
  const float inv_hidden = static_cast<float>(p.num_tokens) /
                           static_cast<float>(static_cast<int64_t>(p.num_tokens) * p.hidden);
  return launch_pdl(rms_norm_kernel<T, kWidth, kAdd>, dim3(p.num_tokens), dim3(threads), 0, stream,
                    p, inv_hidden);
}

template <typename T, bool kAdd>
cudaError_t launch_dtype(const RmsNormParams& p, cudaStream_t stream) {
  constexpr int kWidth = kVecWidth<T>;
  bool vectorized = p.hidden % kWidth == 0 && aligned16(p.x) && aligned16(p.weight) &&
                    aligned16(p.out) && p.x_stride % kWidth == 0 && p.out_stride % kWidth == 0;
  if (kAdd) {
    vectorized = vectorized && aligned16(p.residual) && aligned16(p.summed) &&
                 p.residual_stride % kWidth == 0 && p.summed_stride % kWidth == 0;
  }
  return vectorized ? launch_width<T, kWidth, kAdd>(p, stream)
                    : launch_width<T, 1, kAdd>(p, stream);
}

template <bool kAdd>
void launch(const RmsNormParams& p, DType dtype, cudaStream_t stream, const char* name) {
  const std::string n(name);
  require(valid_dtype(dtype), n + ": dtype must be float32, float16 or bfloat16");
  require(p.num_tokens >= 0, n + ": negative num_tokens");
  require(p.hidden > 0, n + ": hidden size must be positive, got " + std::to_string(p.hidden));
  require(std::isfinite(p.eps) && p.eps >= 0.f, n + ": eps must be finite and non-negative");
  require(p.x_stride >= 0 && p.out_stride >= p.hidden,
          n + ": x row stride must be >= 0 and out row stride >= hidden");
  if (kAdd) {
    require(p.residual_stride >= 0 && p.summed_stride >= p.hidden,
            n + ": residual row stride must be >= 0 and summed row stride >= hidden");
  }
  if (p.num_tokens == 0) return;
  require(p.x && p.weight && p.out && (!kAdd || (p.residual && p.summed)),
          n + ": null device pointer");
  check_launch(dispatch_dtype(dtype,
                              [&](auto tag) {
                                return launch_dtype<typename decltype(tag)::type, kAdd>(p, stream);
                              }),
               name);
}

}  // namespace

void launch_rms_norm(const RmsNormParams& p, DType dtype, cudaStream_t stream) {
  launch<false>(p, dtype, stream, "rms_norm");
}

void launch_fused_add_rms_norm(const RmsNormParams& p, DType dtype, cudaStream_t stream) {
  launch<true>(p, dtype, stream, "fused_add_rms_norm");
}

}  // namespace mmcore::kernels
