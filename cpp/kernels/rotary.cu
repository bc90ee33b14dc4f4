// Rotary embedding: a 2-D grid, y over tokens, x over (head, chunk) items of the query heads
// then the key heads (then the value heads, copied unrotated, when it writes the KV cache too:
// rotated keys and the values go to their paged cache slots); a chunk is kWidth elements of each
// half of a head (16-byte vectors when aligned, scalars otherwise), rotated against the same chunk
// of the cache's cos and sin rows. M-RoPE (3 position rows): each chunk reads the position of its
// frequency section's row.
#include <algorithm>
#include <string>

#include "kernels/elementwise_utils.cuh"
#include "kernels/pdl.cuh"
#include "kernels/rotary.h"

namespace mmcore::kernels {
namespace {

constexpr int kThreads = 128;

// kFloatMath: a float32 cache, float32 arithmetic, one rounding (RotaryParams::float_math).
// kCache: the fused KV-cache write (RotaryParams::key_cache): value-head items follow the key
// heads, and key/value rows go to their token's cache slot instead of key_out.
template <typename T, int kWidth, bool kFloatMath, bool kCache>
__global__ void __launch_bounds__(kThreads) rotary_kernel(const RotaryParams p) {
  pdl_wait();  // reads the previous kernel's output
  pdl_launch_dependents();
  using V = Vec<T, kWidth>;
  const int half = p.head_dim / 2;
  const int chunks = half / kWidth;
  const int item = blockIdx.x * kThreads + threadIdx.x;
  const int kv_heads = kCache ? 2 * p.num_kv_heads : p.num_kv_heads;
  if (item >= (p.num_q_heads + kv_heads) * chunks) return;
  const int head = item / chunks;
  const int offset = (item % chunks) * kWidth;
  const bool is_query = head < p.num_q_heads;
  const bool is_value = kCache && head >= p.num_q_heads + p.num_kv_heads;
  const bool to_cache = kCache && !is_query;
  const int h = is_query ? head : head - p.num_q_heads - (is_value ? p.num_kv_heads : 0);
  const T* src = static_cast<const T*>(is_query   ? p.query
                                       : is_value ? p.value
                                                  : p.key) +
                 h * (is_query   ? p.q_stride_head
                      : is_value ? p.v_stride_head
                                 : p.k_stride_head) +
                 offset;
  T* dst = to_cache ? static_cast<T*>(is_value ? p.value_cache : p.key_cache) +
                          h * (is_value ? p.vc_stride_head : p.kc_stride_head) + offset
                    : static_cast<T*>(is_query ? p.query_out : p.key_out) +
                          h * (is_query ? p.qo_stride_head : p.ko_stride_head) + offset;
  const int64_t src_stride = is_query   ? p.q_stride_token
                             : is_value ? p.v_stride_token
                                        : p.k_stride_token;
  const int64_t dst_stride = is_query ? p.qo_stride_token : p.ko_stride_token;
  // M-RoPE: the position row of this chunk's frequencies (a chunk never straddles sections).
  const int row = offset < p.mrope_section[0]                        ? 0
                  : offset < p.mrope_section[0] + p.mrope_section[1] ? 1
                                                                     : 2;
  const bool mrope = p.mrope_section[0] + p.mrope_section[1] + p.mrope_section[2] > 0;
  const int64_t row_offset = mrope ? row * p.positions_row_stride : 0;

  for (int64_t token = blockIdx.y; token < p.num_tokens; token += gridDim.y) {
    T* dst_row = dst + token * dst_stride;
    if constexpr (kCache) {
      if (to_cache) {
        // reshape_and_cache's rule: negative and out-of-range slots are not written.
        const int64_t slot = p.slot_mapping[token];
        if (slot < 0 || slot / p.block_size >= p.num_blocks) continue;
        dst_row = dst + (slot / p.block_size) * (is_value ? p.vc_stride_block : p.kc_stride_block) +
                  (slot % p.block_size) * (is_value ? p.vc_stride_token : p.kc_stride_token);
        if (is_value) {
          const T* x = src + token * src_stride;
          *reinterpret_cast<V*>(dst_row) = *reinterpret_cast<const V*>(x);
          *reinterpret_cast<V*>(dst_row + half) = *reinterpret_cast<const V*>(x + half);
          continue;
        }
      }
    }
    const int64_t index = row_offset + token;
    const int64_t pos = p.positions_int64 ? static_cast<const int64_t*>(p.positions)[index]
                                          : static_cast<const int32_t*>(p.positions)[index];
    V* out = reinterpret_cast<V*>(dst_row);
    V o1, o2;
    if (pos < 0 || pos >= p.max_positions) {
#pragma unroll
      for (int k = 0; k < kWidth; ++k) o1.v[k] = o2.v[k] = from_float<T>(0.f);
    } else if constexpr (kFloatMath) {
      const float* row = static_cast<const float*>(p.cos_sin_cache) + pos * p.cache_stride + offset;
      const T* x = src + token * src_stride;
      const V x1 = *reinterpret_cast<const V*>(x);
      const V x2 = *reinterpret_cast<const V*>(x + half);
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        const float a = to_float(x1.v[k]), b = to_float(x2.v[k]);
        const float cf = row[k], sf = row[half + k];
        o1.v[k] = from_float<T>(__fadd_rn(__fmul_rn(a, cf), -__fmul_rn(b, sf)));
        o2.v[k] = from_float<T>(__fadd_rn(__fmul_rn(b, cf), __fmul_rn(a, sf)));
      }
    } else {
      const T* row = static_cast<const T*>(p.cos_sin_cache) + pos * p.cache_stride + offset;
      const V c = *reinterpret_cast<const V*>(row);
      const V s = *reinterpret_cast<const V*>(row + half);
      const T* x = src + token * src_stride;
      const V x1 = *reinterpret_cast<const V*>(x);
      const V x2 = *reinterpret_cast<const V*>(x + half);
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        const float a = to_float(x1.v[k]), b = to_float(x2.v[k]);
        const float cf = to_float(c.v[k]), sf = to_float(s.v[k]);
        // x * cos + rotate_half(x) * sin, each product rounded; -(b * s) == (-b) * s exactly.
        o1.v[k] =
            from_float<T>(__fadd_rn(round_to<T>(__fmul_rn(a, cf)), -round_to<T>(__fmul_rn(b, sf))));
        o2.v[k] =
            from_float<T>(__fadd_rn(round_to<T>(__fmul_rn(b, cf)), round_to<T>(__fmul_rn(a, sf))));
      }
    }
    out[0] = o1;
    *reinterpret_cast<V*>(reinterpret_cast<T*>(out) + half) = o2;
  }
}

template <typename T, int kWidth>
cudaError_t launch_width(const RotaryParams& p, cudaStream_t stream) {
  const bool cache = p.key_cache != nullptr;
  const int heads = p.num_q_heads + (cache ? 2 : 1) * p.num_kv_heads;
  const int items = heads * (p.head_dim / 2 / kWidth);
  const dim3 grid((items + kThreads - 1) / kThreads, std::min(p.num_tokens, kMaxGridY));
  const dim3 block(kThreads);
  if (cache) {
    return p.float_math
               ? launch_pdl(rotary_kernel<T, kWidth, true, true>, grid, block, 0, stream, p)
               : launch_pdl(rotary_kernel<T, kWidth, false, true>, grid, block, 0, stream, p);
  }
  return p.float_math
             ? launch_pdl(rotary_kernel<T, kWidth, true, false>, grid, block, 0, stream, p)
             : launch_pdl(rotary_kernel<T, kWidth, false, false>, grid, block, 0, stream, p);
}

// Whether kWidth-element vectors fit every pointer, stride and section boundary.
template <typename T>
bool fits_width(const RotaryParams& p, int width) {
  const auto aligned = [&](const void* ptr) { return aligned_to(ptr, width * sizeof(T)); };
  // A float32 cache is read per element; a cache of T by vectors.
  bool fits = (p.head_dim / 2) % width == 0 &&
              (p.float_math || (p.cache_stride % width == 0 && aligned(p.cos_sin_cache)));
  // The fused cache write's pointers and strides are null / zero without it.
  const void* ptrs[] = {p.query,     p.key,   p.query_out,  p.key_out,
                        p.key_cache, p.value, p.value_cache};
  for (const void* ptr : ptrs) fits = fits && aligned(ptr);
  const int64_t strides[] = {
      p.q_stride_token,  p.q_stride_head,   p.k_stride_token,  p.k_stride_head,
      p.qo_stride_token, p.qo_stride_head,  p.ko_stride_token, p.ko_stride_head,
      p.v_stride_token,  p.v_stride_head,   p.kc_stride_block, p.kc_stride_token,
      p.kc_stride_head,  p.vc_stride_block, p.vc_stride_token, p.vc_stride_head};
  for (int64_t s : strides) fits = fits && s % width == 0;
  // M-RoPE section boundaries must fall between vectors.
  return fits && p.mrope_section[0] % width == 0 &&
         (p.mrope_section[0] + p.mrope_section[1]) % width == 0;
}

template <typename T>
cudaError_t launch_dtype(const RotaryParams& p, cudaStream_t stream) {
  constexpr int kWidth = kVecWidth<T>;
  if (fits_width<T>(p, kWidth)) return launch_width<T, kWidth>(p, stream);
  // Half vectors: e.g. Qwen2.5-VL's vision rope, sections of 20 frequencies.
  if constexpr (kWidth >= 4) {
    if (fits_width<T>(p, kWidth / 2)) return launch_width<T, kWidth / 2>(p, stream);
  }
  return launch_width<T, 1>(p, stream);
}

}  // namespace

void launch_rotary_embedding(const RotaryParams& p, DType dtype, cudaStream_t stream) {
  const std::string n = p.key_cache ? "rotary_embedding_and_cache" : "rotary_embedding";
  require(valid_dtype(dtype), n + ": dtype must be float32, float16 or bfloat16");
  require(p.num_tokens >= 0, n + ": negative num_tokens");
  require(p.num_q_heads > 0 && p.num_kv_heads > 0, n + ": head counts must be positive");
  require(p.head_dim > 0 && p.head_dim % 2 == 0,
          n + ": head_dim must be positive and even, got " + std::to_string(p.head_dim));
  require(p.max_positions > 0 && p.cache_stride >= p.head_dim,
          n + ": cos_sin_cache must have rows of at least head_dim elements");
  const bool cache = p.key_cache != nullptr;
  // With the fused cache write, key_out is unused.
  require(p.qo_stride_head >= p.head_dim && p.qo_stride_token >= p.num_q_heads * p.qo_stride_head &&
              (cache || (p.ko_stride_head >= p.head_dim &&
                         p.ko_stride_token >= p.num_kv_heads * p.ko_stride_head)),
          n + ": output strides overlap");
  require(cache || !p.value_cache, n + ": value_cache given without key_cache");
  if (cache) {
    require(p.block_size > 0 && p.num_blocks >= 0,
            n + ": block_size must be positive and num_blocks non-negative, got " +
                std::to_string(p.block_size) + " and " + std::to_string(p.num_blocks));
    require(p.kc_stride_head >= p.head_dim &&
                p.kc_stride_token >= p.num_kv_heads * p.kc_stride_head &&
                p.kc_stride_block >= p.block_size * p.kc_stride_token &&
                p.vc_stride_head >= p.head_dim &&
                p.vc_stride_token >= p.num_kv_heads * p.vc_stride_head &&
                p.vc_stride_block >= p.block_size * p.vc_stride_token,
            n + ": KV cache strides overlap (expected [num_blocks, block_size, Hkv, head_dim])");
  }
  const int sections = p.mrope_section[0] + p.mrope_section[1] + p.mrope_section[2];
  require(p.mrope_section[0] >= 0 && p.mrope_section[1] >= 0 && p.mrope_section[2] >= 0 &&
              (sections == 0 || sections == p.head_dim / 2),
          n + ": mrope_section must be 3 non-negative sizes summing to head_dim / 2");
  require(sections == 0 || p.positions_row_stride >= p.num_tokens,
          n + ": M-RoPE position rows overlap");
  if (p.num_tokens == 0) return;
  require(p.positions && p.query && p.key && p.query_out && (cache || p.key_out) && p.cos_sin_cache,
          n + ": null device pointer");
  require(!cache || (p.value && p.value_cache && p.slot_mapping),
          n + ": the KV-cache write needs value, value_cache and slot_mapping");
  check_launch(
      dispatch_dtype(
          dtype, [&](auto tag) { return launch_dtype<typename decltype(tag)::type>(p, stream); }),
      n.c_str());
}

}  // namespace mmcore::kernels
