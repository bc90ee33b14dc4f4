// SiLU-and-mul: a 2-D grid, x over 16-byte vectors of a row (scalars when rows are not aligned),
// y over tokens. silu(v) = v / (1 + expf(-v)) in float32, as torch's CUDA silu computes it, is
// rounded to the dtype before the product, as HF's act_fn(gate) * up rounds it.
#include <algorithm>
#include <string>

#include "kernels/activation.h"
#include "kernels/elementwise_utils.cuh"
#include "kernels/pdl.cuh"

namespace mmcore::kernels {
namespace {

constexpr int kThreads = 256;

template <typename T, int kWidth>
__global__ void __launch_bounds__(kThreads) silu_and_mul_kernel(const SiluAndMulParams p) {
  pdl_wait();  // reads the previous kernel's output
  pdl_launch_dependents();
  using V = Vec<T, kWidth>;
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= p.intermediate / kWidth) return;
  for (int64_t token = blockIdx.y; token < p.num_tokens; token += gridDim.y) {
    const T* row = static_cast<const T*>(p.x) + token * p.x_stride;
    const V gate = reinterpret_cast<const V*>(row)[i];
    const V up = reinterpret_cast<const V*>(row + p.intermediate)[i];
    V o;
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      const float g = to_float(gate.v[k]);
      const float silu = round_to<T>(g / (1.f + expf(-g)));
      o.v[k] = from_float<T>(__fmul_rn(silu, to_float(up.v[k])));
    }
    reinterpret_cast<V*>(static_cast<T*>(p.out) + token * p.out_stride)[i] = o;
  }
}

template <typename T, int kWidth>
cudaError_t launch_width(const SiluAndMulParams& p, cudaStream_t stream) {
  const int num_vecs = p.intermediate / kWidth;
  const dim3 grid((num_vecs + kThreads - 1) / kThreads, std::min(p.num_tokens, kMaxGridY));
  return launch_pdl(silu_and_mul_kernel<T, kWidth>, grid, dim3(kThreads), 0, stream, p);
}

template <typename T>
cudaError_t launch_dtype(const SiluAndMulParams& p, cudaStream_t stream) {
  constexpr int kWidth = kVecWidth<T>;
  // The up half starts `intermediate` elements into the row: it must be a vector multiple too.
  const bool vectorized = p.intermediate % kWidth == 0 && aligned16(p.x) && aligned16(p.out) &&
                          p.x_stride % kWidth == 0 && p.out_stride % kWidth == 0;
  return vectorized ? launch_width<T, kWidth>(p, stream) : launch_width<T, 1>(p, stream);
}

}  // namespace

void launch_silu_and_mul(const SiluAndMulParams& p, DType dtype, cudaStream_t stream) {
  require(valid_dtype(dtype), "silu_and_mul: dtype must be float32, float16 or bfloat16");
  require(p.num_tokens >= 0, "silu_and_mul: negative num_tokens");
  require(p.intermediate > 0, "silu_and_mul: intermediate size must be positive, got " +
                                  std::to_string(p.intermediate));
  require(p.x_stride >= 0 && p.out_stride >= p.intermediate,
          "silu_and_mul: x row stride must be >= 0 and out row stride >= intermediate");
  if (p.num_tokens == 0) return;
  require(p.x && p.out, "silu_and_mul: null device pointer");
  check_launch(
      dispatch_dtype(
          dtype, [&](auto tag) { return launch_dtype<typename decltype(tag)::type>(p, stream); }),
      "silu_and_mul");
}

}  // namespace mmcore::kernels
