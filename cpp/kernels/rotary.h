// Launcher of NeoX-style (half-split) rotary embedding from a cos/sin cache (HF Llama numerics).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

// Heads [num_tokens, num_heads, head_dim] with contiguous last dims; strides in elements.
struct RotaryParams {
  const void* positions = nullptr;  // [num_tokens] rows of the cache, int64 or int32
  bool positions_int64 = true;
  // M-RoPE: positions are 3 rows (temporal, height, width) of num_tokens, positions_row_stride
  // elements apart; frequency j < mrope_section[0] takes row 0, the next mrope_section[1]
  // row 1, the rest row 2. All sections zero: plain 1-D positions.
  int64_t positions_row_stride = 0;
  int mrope_section[3] = {0, 0, 0};
  const void* query = nullptr;
  int64_t q_stride_token = 0, q_stride_head = 0;
  const void* key = nullptr;
  int64_t k_stride_token = 0, k_stride_head = 0;
  void* query_out = nullptr;
  int64_t qo_stride_token = 0, qo_stride_head = 0;
  void* key_out = nullptr;
  int64_t ko_stride_token = 0, ko_stride_head = 0;
  const void* cos_sin_cache = nullptr;  // [max_positions, head_dim]: cos | sin, dtype of q/k
  // The cache is float32 and each output is computed in float32 and rounded once (HF's vision
  // rope: q.float() * cos + rotate_half(q.float()) * sin, cast back), not per product.
  bool float_math = false;
  int64_t cache_stride = 0;
  int max_positions = 0;
  int num_tokens = 0, num_q_heads = 0, num_kv_heads = 0, head_dim = 0;
  // Fused KV-cache write (reshape_and_cache), on when key_cache is set: the rotated key rows go
  // to key_cache at slot_mapping[token] (key_out unused), the value rows [num_tokens, Hkv,
  // head_dim] unrotated to value_cache; tokens whose slot is negative or past num_blocks are
  // not written. Caches [num_blocks, block_size, Hkv, head_dim] of q/k's dtype, last dim
  // contiguous, strides (block, token, head) in elements.
  const void* value = nullptr;
  int64_t v_stride_token = 0, v_stride_head = 0;
  void* key_cache = nullptr;
  void* value_cache = nullptr;
  int64_t kc_stride_block = 0, kc_stride_token = 0, kc_stride_head = 0;
  int64_t vc_stride_block = 0, vc_stride_token = 0, vc_stride_head = 0;
  const int64_t* slot_mapping = nullptr;  // [num_tokens]
  int block_size = 0, num_blocks = 0;
};

// With h = head_dim / 2, c/s = the cache row of the token's position, for i < h:
//   out[i]     = round(round(x[i] * c[i]) - round(x[i + h] * s[i]))
//   out[i + h] = round(round(x[i + h] * c[i]) + round(x[i] * s[i]))
// With M-RoPE, c[i] and s[i] come from the cache row of the position in row r(i) of the
// section that frequency i falls in (HF apply_multimodal_rotary_pos_emb).
// With float_math (a float32 cache): out[i] = round(x[i] * c[i] - x[i + h] * s[i]), each
// product and the sum in float32 (no fused multiply-add), one rounding to the output dtype.
// Positions outside [0, max_positions) give zero rows. Outputs must not alias the inputs.
// With key_cache set, the cache rows written equal those of this op followed by
// launch_reshape_and_cache (same dtype caches), in one launch.
// Throws std::invalid_argument on bad arguments, std::runtime_error on a CUDA error.
void launch_rotary_embedding(const RotaryParams& p, DType dtype, cudaStream_t stream);

}  // namespace mmcore::kernels
