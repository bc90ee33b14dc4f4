// KV-cache write by slot mapping: one CTA per token, threads over (head, dim) of K and V.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <stdexcept>
#include <string>

#include "kernels/cache_write.h"
#include "kernels/launch_utils.h"

namespace mmcore::kernels {
namespace {

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}

template <typename TSrc, typename TDst>
__global__ void reshape_and_cache_kernel(const CacheWriteParams p) {
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
  const int elems = p.num_kv_heads * p.head_dim;
  for (int e = threadIdx.x; e < elems; e += blockDim.x) {
    const int h = e / p.head_dim, d = e % p.head_dim;
    const TSrc k = key[token * p.key_stride_token + h * p.key_stride_head + d];
    const TSrc v = value[token * p.value_stride_token + h * p.value_stride_head + d];
    key_cache[block * p.kc_stride_block + offset * p.kc_stride_token + h * p.kc_stride_head + d] =
        static_cast<TDst>(to_float(k));
    value_cache[block * p.vc_stride_block + offset * p.vc_stride_token + h * p.vc_stride_head + d] =
        static_cast<TDst>(to_float(v));
  }
}

// FP8 (e4m3) caches: x / scale[head], rounded to nearest and saturated to +-448 (the torch
// reference clamps, then casts; both round to nearest even).
template <typename TSrc>
__global__ void reshape_and_cache_fp8_kernel(const CacheWriteParams p) {
  const int token = blockIdx.x;
  const int64_t slot = p.slot_mapping[token];
  if (slot < 0) return;
  const int64_t block = slot / p.block_size;
  const int64_t offset = slot % p.block_size;
  if (block >= p.num_blocks) return;
  const auto* key = static_cast<const TSrc*>(p.key);
  const auto* value = static_cast<const TSrc*>(p.value);
  auto* key_cache = static_cast<__nv_fp8_storage_t*>(p.key_cache);
  auto* value_cache = static_cast<__nv_fp8_storage_t*>(p.value_cache);
  const int elems = p.num_kv_heads * p.head_dim;
  for (int e = threadIdx.x; e < elems; e += blockDim.x) {
    const int h = e / p.head_dim, d = e % p.head_dim;
    const float k = to_float(key[token * p.key_stride_token + h * p.key_stride_head + d]);
    const float v = to_float(value[token * p.value_stride_token + h * p.value_stride_head + d]);
    key_cache[block * p.kc_stride_block + offset * p.kc_stride_token + h * p.kc_stride_head + d] =
        __nv_cvt_float_to_fp8(k / p.k_scale[h], __NV_SATFINITE, __NV_E4M3);
    value_cache[block * p.vc_stride_block + offset * p.vc_stride_token + h * p.vc_stride_head + d] =
        __nv_cvt_float_to_fp8(v / p.v_scale[h], __NV_SATFINITE, __NV_E4M3);
  }
}

template <typename TSrc>
cudaError_t launch_for_cache(const CacheWriteParams& p, DType cache_dtype, cudaStream_t stream) {
  const int threads = p.num_kv_heads * p.head_dim >= 256 ? 256 : 128;
  if (cache_dtype == DType::kFloat8E4M3) {
    reshape_and_cache_fp8_kernel<TSrc><<<p.num_tokens, threads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  return dispatch_dtype(cache_dtype, [&](auto tag) {
    using TDst = typename decltype(tag)::type;
    reshape_and_cache_kernel<TSrc, TDst><<<p.num_tokens, threads, 0, stream>>>(p);
    return cudaGetLastError();
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
