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
};

// With h = head_dim / 2, c/s = the cache row of the token's position, for i < h:
//   out[i]     = round(round(x[i] * c[i]) - round(x[i + h] * s[i]))
//   out[i + h] = round(round(x[i + h] * c[i]) + round(x[i] * s[i]))
// With M-RoPE, c[i] and s[i] come from the cache row of the position in row r(i) of the
// section that frequency i falls in (HF apply_multimodal_rotary_pos_emb).
// With float_math (a float32 cache): out[i] = round(x[i] * c[i] - x[i + h] * s[i]), each
// product and the sum in float32 (no fused multiply-add), one rounding to the output dtype.
// Positions outside [0, max_positions) give zero rows. Outputs must not alias the inputs.
// Throws std::invalid_argument on bad arguments, std::runtime_error on a CUDA error.
void launch_rotary_embedding(const RotaryParams& p, DType dtype, cudaStream_t stream);

}  // namespace mmcore::kernels
