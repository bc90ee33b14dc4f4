// Launcher of the KV-cache write by slot mapping (reshape_and_cache).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

struct CacheWriteParams {
  const void* key = nullptr;  // [T, Hkv, D], last dim contiguous
  const void* value = nullptr;
  int64_t key_stride_token = 0, key_stride_head = 0;
  int64_t value_stride_token = 0, value_stride_head = 0;
  void* key_cache = nullptr;  // [num_blocks, block_size, Hkv, D], last dim contiguous
  void* value_cache = nullptr;
  int64_t kc_stride_block = 0, kc_stride_token = 0, kc_stride_head = 0;
  int64_t vc_stride_block = 0, vc_stride_token = 0, vc_stride_head = 0;
  const int64_t* slot_mapping = nullptr;  // [T]; negative = skip the token
  int num_tokens = 0, num_kv_heads = 0, head_dim = 0, block_size = 0, num_blocks = 0;
  const float* k_scale = nullptr;  // [Hkv], FP8 caches only: stored = x / scale, saturated
  const float* v_scale = nullptr;
};

// Writes key/value rows into the caches at slot_mapping (converting dtype when they differ;
// cache_dtype kFloat8E4M3 quantises with the per-head scales).
// Throws std::invalid_argument on bad arguments, std::runtime_error on a CUDA error.
void launch_reshape_and_cache(const CacheWriteParams& p, DType src_dtype, DType cache_dtype,
                              cudaStream_t stream);

}  // namespace mmcore::kernels
