// KV-cache write by slot mapping: CTAs per token, threads over (head, column vector) of K and V.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cache_write.h"
#include "kernels/elementwise_utils.cuh"
#include "kernels/launch_utils.h"

namespace mmcore::kernels {
namespace {

template <typename TDst>
__device__ __forceinline__ TDst convert(float x, float /*scale*/) {
  return static_cast<TDst>(x);
}
// FP8 (e4m3) caches: x / scale[head], rounded to nearest and saturated to +-448 (the torch
// reference clamps, then casts; both round to nearest even).
template <>
__device__ __forceinline__ __nv_fp8_storage_t convert<__nv_fp8_storage_t>(float x, float scale) {
  return __nv_cvt_float_to_fp8(x / scale, __NV_SATFINITE, __NV_E4M3);
}

// One CTA row per token (blockIdx.x), its (head, kVec-column) vectors spread over blockIdx.y and
// the threads: at batch 1 the K/V row of every head is written by several CTAs at once, each
// thread issuing its loads before its stores.
template <typename TSrc, typename TDst, int kVec>
__global__ void reshape_and_cache_kernel(const CacheWriteParams p) {
  constexpr bool kFp8 = std::is_same_v<TDst, __nv_fp8_storage_t>;
  const int token = blockIdx.x;
  const int64_t slot = p.slot_mapping[token];
  if (slot < 0) return;
  const int64_t block = slot / p.block_size;
  const int64_t offset = slot % p.block_size;
  // Out-of-range slots would write outside the cache: skip them as well.
  if (block >= p.num_blocks) return;
  const auto* key = static_cast<const TSrc*>(p.key);
  const auto* value = static_cast<const TSrc*>(p.value);
  auto* key_cache = static_cast<TDst*>(p.key_cache);
  auto* value_cache = static_cast<TDst*>(p.value_cache);
  const int vecs_per_head = p.head_dim / kVec;
  const int vecs = p.num_kv_heads * vecs_per_head;
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < vecs; i += gridDim.y * blockDim.x) {
    const int h = i / vecs_per_head, d = (i - h * vecs_per_head) * kVec;
    const auto k = *reinterpret_cast<const Vec<TSrc, kVec>*>(key + token * p.key_stride_token +
                                                             h * p.key_stride_head + d);
    const auto v = *reinterpret_cast<const Vec<TSrc, kVec>*>(value + token * p.value_stride_token +
                                                             h * p.value_stride_head + d);
    const float k_scale = kFp8 ? p.k_scale[h] : 1.f, v_scale = kFp8 ? p.v_scale[h] : 1.f;
    Vec<TDst, kVec> k_out, v_out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      k_out.v[j] = convert<TDst>(static_cast<float>(k.v[j]), k_scale);
      v_out.v[j] = convert<TDst>(static_cast<float>(v.v[j]), v_scale);
    }
    *reinterpret_cast<Vec<TDst, kVec>*>(key_cache + block * p.kc_stride_block +
                                        offset * p.kc_stride_token + h * p.kc_stride_head + d) =
        k_out;
    *reinterpret_cast<Vec<TDst, kVec>*>(value_cache + block * p.vc_stride_block +
                                        offset * p.vc_stride_token + h * p.vc_stride_head + d) =
        v_out;
  }
}

// Whether rows move as kVec-element vectors: every pointer, stride and the head dim aligned.
template <typename TSrc, typename TDst>
bool vectorizable(const CacheWriteParams& p, int vec) {
  const int64_t src_strides[] = {p.key_stride_token, p.key_stride_head, p.value_stride_token,
                                 p.value_stride_head};
  const int64_t dst_strides[] = {p.kc_stride_block, p.kc_stride_token, p.kc_stride_head,
                                 p.vc_stride_block, p.vc_stride_token, p.vc_stride_head};
  bool ok = p.head_dim % vec == 0;
  for (int64_t s : src_strides) ok = ok && s % vec == 0;
  for (int64_t s : dst_strides) ok = ok && s % vec == 0;
  const int src_bytes = vec * sizeof(TSrc), dst_bytes = vec * sizeof(TDst);
  return ok && aligned_to(p.key, src_bytes) && aligned_to(p.value, src_bytes) &&
         aligned_to(p.key_cache, dst_bytes) && aligned_to(p.value_cache, dst_bytes);
}

template <typename TSrc, typename TDst>
cudaError_t launch_typed(const CacheWriteParams& p, cudaStream_t stream) {
  constexpr int kThreads = 128;
  constexpr int kVec = kVecWidth<TSrc>;  // 16-byte loads
  const bool vec = vectorizable<TSrc, TDst>(p, kVec);
  const int vecs = p.num_kv_heads * (vec ? p.head_dim / kVec : p.head_dim);
  // Enough CTAs a token that each thread moves one vector, capped for long rows.
  const dim3 grid(p.num_tokens, std::min((vecs + kThreads - 1) / kThreads, 32));
  if (vec) {
    reshape_and_cache_kernel<TSrc, TDst, kVec><<<grid, kThreads, 0, stream>>>(p);
  } else {
    reshape_and_cache_kernel<TSrc, TDst, 1><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename TSrc>
cudaError_t launch_for_cache(const CacheWriteParams& p, DType cache_dtype, cudaStream_t stream) {
  if (cache_dtype == DType::kFloat8E4M3) return launch_typed<TSrc, __nv_fp8_storage_t>(p, stream);
  return dispatch_dtype(cache_dtype, [&](auto tag) {
    return launch_typed<TSrc, typename decltype(tag)::type>(p, stream);
  });
}

}  // namespace

void launch_reshape_and_cache(const CacheWriteParams& p, DType src_dtype, DType cache_dtype,
                              cudaStream_t stream) {
  const bool fp8 = cache_dtype == DType::kFloat8E4M3;
  if (!valid_dtype(src_dtype) || !(valid_dtype(cache_dtype) || fp8)) {
    throw std::invalid_argument(
        "reshape_and_cache: dtype must be float32, float16 or bfloat16 (caches also "
        "float8_e4m3fn)");
  }
  if (fp8 && p.num_tokens > 0 && (!p.k_scale || !p.v_scale)) {
    throw std::invalid_argument("reshape_and_cache: an FP8 cache needs k_scale and v_scale");
  }
  if (p.num_tokens < 0 || p.num_kv_heads <= 0 || p.head_dim <= 0 || p.block_size <= 0 ||
      p.num_blocks < 0) {
    throw std::invalid_argument("reshape_and_cache: sizes must be positive");
  }
  if (p.num_tokens > 0 &&
      (!p.key || !p.value || !p.key_cache || !p.value_cache || !p.slot_mapping)) {
    throw std::invalid_argument("reshape_and_cache: null device pointer");
  }
  if (p.num_tokens == 0) return;
  check_launch(dispatch_dtype(src_dtype,
                              [&](auto tag) {
                                using TSrc = typename decltype(tag)::type;
                                return launch_for_cache<TSrc>(p, cache_dtype, stream);
                              }),
               "reshape_and_cache");
}

}  // namespace mmcore::kernels
