// Decode variant over an FP8 (e4m3) paged cache at head dim 128: K and V go from their e4m3
// stages in shared memory straight into mma fragments, converted in registers, with no T copy of
// the tile. Without the T tile pair (35 KB) four e4m3 stages fit three CTAs an SM, so three tiles
// a CTA stay in flight; the smem-converting path of attention_kernel kept one.
//
// Layout tricks (docs/fp8_decode_kernel.md):
// - The math runs in float16 mma whatever T is: every e4m3 value is a float16 (cvt e4m3x2 ->
//   f16x2 is one instruction), P in float16 is finer than in bfloat16, and a bfloat16 Q is
//   exact in float16 between 2^-14 and 2^15 (a larger Q is scaled down by a power of two, the
//   factor folded into the softmax scale).
// - K: the sum over head dims may visit them in any order, so Q's dims are permuted such that
//   each thread's K fragments for four k-steps are one 16-byte row chunk (one LDS.128).
// - V: the output dims may be permuted too (they are put back when stored), so thread g of an
//   n-tile takes head dims 16g .. 16g + 15 of its four keys: four LDS.128 and byte permutes per
//   16 keys, and thread t of the accumulators ends up holding dims 32t .. 32t + 31.
// - e4m3 rows are 128 bytes with their 16-byte chunks XOR-swizzled by row, so both access
//   patterns are free of bank conflicts.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "kernels/attention_config.cuh"
#include "kernels/attention_merge.cuh"
#include "kernels/attention_params.h"
#include "kernels/attention_tile_softmax.cuh"
#include "kernels/mma_utils.cuh"
#include "kernels/pdl.cuh"

namespace mmcore::kernels {

template <int kWarpsN>
struct DecodeFp8Config {
  static constexpr int kHeadDim = 128;
  static constexpr int kBlockM = 16;  // one 16-row mma tile: a GQA group's rows of one token
  static constexpr int kBlockN = 64;  // keys a tile; each warp owns kBlockN / kWarpsN of them
  static constexpr int kWarpsM = 1;
  static constexpr int kThreads = 32 * kWarpsN;
  static constexpr int kKeysPerWarp = kBlockN / kWarpsN;
  static_assert(kKeysPerWarp % 16 == 0, "each warp needs whole 16-key steps");
  static constexpr int kStages = 4;
  static constexpr int kRowBytes = kHeadDim;  // one key's e4m3 head slice: 8 chunks of 16 bytes
  static constexpr int kTileBytes = kBlockN * kRowBytes;
  static constexpr int kQStride = kHeadDim + 8;  // T elements
  static constexpr size_t kQBytes = kBlockM * kQStride * 2;
  static constexpr size_t kKvBytes = 2 * kStages * kTileBytes;
  static constexpr size_t kSmemBytes = kQBytes + kKvBytes;
  static constexpr size_t kMergeBytes = kWarpsN * 16 * (kHeadDim + 4) * sizeof(float);
  static_assert(kMergeBytes <= kKvBytes, "merge buffer");
};

// Byte offset of 16-byte chunk `chunk` of e4m3 row `row` in a stage (see the file comment).
__device__ __forceinline__ int fp8_chunk_offset(int row, int chunk) {
  return row * 128 + ((chunk ^ (row & 6) ^ ((row & 1) << 2)) << 4);
}

// Two e4m3 values (bits 0-15 of `pair`, low byte first) as a float16 pair.
__device__ __forceinline__ uint32_t e4m3x2_to_half2(uint32_t pair) {
  return fp8x2_to<__half>(pair);
}

template <typename T, int kWarpsN>
__global__ void __launch_bounds__(DecodeFp8Config<kWarpsN>::kThreads)
    attention_decode_fp8_kernel(const AttentionParams p) {
  using Cfg = DecodeFp8Config<kWarpsN>;
  pdl_wait();  // row-tile offsets, q and the cache come from earlier kernels
  pdl_launch_dependents();
  constexpr int kBlockN = Cfg::kBlockN, kQStride = Cfg::kQStride;
  constexpr int kNT = Cfg::kKeysPerWarp / 8;  // 8-key score tiles a warp
  constexpr int kDT = 16;                     // 8-wide output tiles of head dim 128
  constexpr int kKSteps = 8;                  // 16-dim k-steps of head dim 128
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const T* s_q = reinterpret_cast<const T*>(smem_raw);
  uint8_t* s_f8 = smem_raw + Cfg::kQBytes;  // kStages (K tile, V tile) pairs of e4m3 rows

  RowTile rt;
  if (!locate_row_tile(p, blockIdx.x, Cfg::kBlockM, kBlockN, rt)) return;
  const int q_start = rt.q_start, num_rows = rt.num_rows, row0 = rt.row0;
  const int context = rt.context, kv_begin = rt.kv_begin, kv_lo = rt.kv_lo, kv_end = rt.kv_end;
  const int min_hi = rt.min_hi, max_lo = rt.max_lo;
  const bool spans = rt.spans;
  const int seq = rt.seq, group = p.group;
  const int kv_head = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, wn = tid / 32;
  const int g = lane / 4, t = lane % 4;

  const int kv_tiles = ceil_div(max(kv_end - kv_begin, 0), kBlockN);
  const int tiles_per_split = ceil_div(kv_tiles, p.num_splits);
  const int tile_begin = blockIdx.z * tiles_per_split;
  const int n_tiles = max(0, min(kv_tiles, tile_begin + tiles_per_split) - tile_begin);

  float scale_log2 = p.scale_log2 * p.k_scale[kv_head];
  const float out_scale = p.v_scale[kv_head];

  const T* q_base = static_cast<const T*>(p.q);
  for (int c = tid; c < Cfg::kBlockM * 16; c += Cfg::kThreads) {
    const int r = c / 16, ch = c % 16;
    const int row = row0 + r;
    const bool valid = row < num_rows;
    const T* src = q_base;
    if (valid) {
      src += (q_start + row / group) * p.q_stride_token +
             (kv_head * group + row % group) * p.q_stride_head + ch * 8;
    }
    cp_async_16(const_cast<T*>(s_q) + r * kQStride + ch * 8, src, valid);
  }
  cp_async_commit();

  // Each warp copies the e4m3 rows of its own keys: lane -> chunk lane % 8 of every fourth row.
  const int row_base = wn * Cfg::kKeysPerWarp;
  const int64_t k_head_off = kv_head * p.k_stride_head;
  const int64_t v_head_off = kv_head * p.v_stride_head;
  auto load_kv = [&](int kv_tile, int stage) {
    const int n0 = kv_begin + kv_tile * kBlockN + row_base;
    const int ch = lane % 8;
    uint8_t* k_stage = s_f8 + stage * 2 * Cfg::kTileBytes;
#pragma unroll
    for (int r = lane / 8; r < Cfg::kKeysPerWarp; r += 4) {
      const int key = n0 + r;
      const bool valid = key < kv_end && key >= kv_lo;
      int64_t k_off = 0, v_off = 0;
      if (valid) {
        const int block_idx = p.block_shift >= 0 ? key >> p.block_shift : key / p.block_size;
        const int in_block = key - block_idx * p.block_size;
        const int64_t block = p.block_tables[seq * p.block_table_stride + block_idx];
        k_off = block * p.k_stride_block + in_block * p.k_stride_token + k_head_off + ch * 16;
        v_off = block * p.v_stride_block + in_block * p.v_stride_token + v_head_off + ch * 16;
      }
      const int dst = fp8_chunk_offset(row_base + r, ch);
      cp_async_16(k_stage + dst, static_cast<const uint8_t*>(p.k) + k_off, valid);
      cp_async_16(k_stage + Cfg::kTileBytes + dst, static_cast<const uint8_t*>(p.v) + v_off, valid);
    }
  };

#pragma unroll
  for (int st = 0; st < Cfg::kStages - 1; ++st) {
    if (st < n_tiles) load_kv(tile_begin + st, st);
    cp_async_commit();
  }
  cp_async_wait<Cfg::kStages - 1>();
  __syncthreads();

  // Q fragments in float16 with permuted dims: k-step ks = 4b + s, thread (g, t) holds head dims
  // 64b + 16t + 4s + {0, 1} (as mma k 2t, 2t + 1) and + {2, 3} (as k 2t + 8, 2t + 9) of rows g
  // and g + 8, which is what K's 16-byte chunk 4b + t gives the same thread.
  uint32_t q_frag[kKSteps][4];
  {
    float qv[2][2][16];  // [row g / g + 8][b][16 dims]
    float q_max = 0.f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const T* src = s_q + (g + 8 * h) * kQStride + 64 * b + 16 * t;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          qv[h][b][i] = static_cast<float>(src[i]);
          q_max = fmaxf(q_max, fabsf(qv[h][b][i]));
        }
      }
    }
    // A bfloat16 Q beyond float16's range: scale by 2^-e (exact), fold 2^e into the scale.
    float q_mul = 1.f;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
#pragma unroll
      for (int off = 16; off > 0; off /= 2)
        q_max = fmaxf(q_max, __shfl_xor_sync(0xffffffff, q_max, off));
      if (q_max > 32768.f && q_max <= FLT_MAX) {
        const int e = ilogbf(q_max) - 14;
        q_mul = exp2f(static_cast<float>(-e));
        scale_log2 *= exp2f(static_cast<float>(e));
      }
    }
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      const int b = ks / 4, s = ks % 4;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        q_frag[ks][h] =
            pack2<__half>(qv[h][b][4 * s] * q_mul, qv[h][b][4 * s + 1] * q_mul);  // k 2t, 2t+1
        q_frag[ks][2 + h] =
            pack2<__half>(qv[h][b][4 * s + 2] * q_mul, qv[h][b][4 * s + 3] * q_mul);  // k + 8
      }
    }
  }

  float o_acc[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) o_acc[i][0] = o_acc[i][1] = o_acc[i][2] = o_acc[i][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j % Cfg::kStages;
    const int ahead = j + Cfg::kStages - 1;
    if (ahead < n_tiles) load_kv(tile_begin + ahead, ahead % Cfg::kStages);
    cp_async_commit();
    cp_async_wait<Cfg::kStages - 1>();
    __syncwarp();
    const uint8_t* k_s = s_f8 + stage * 2 * Cfg::kTileBytes;
    const uint8_t* v_s = k_s + Cfg::kTileBytes;
    const int n0 = kv_begin + (tile_begin + j) * kBlockN;

    auto compute_tile = [&](auto masked) {
      float s[kNT][4];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
        const int row = row_base + nt * 8 + g;
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const uint4 kc = *reinterpret_cast<const uint4*>(k_s + fp8_chunk_offset(row, 4 * b + t));
          const uint32_t words[4] = {kc.x, kc.y, kc.z, kc.w};
#pragma unroll
          for (int w = 0; w < 4; ++w) {
            mma_16816<__half>(s[nt], q_frag[4 * b + w], e4m3x2_to_half2(words[w]),
                              e4m3x2_to_half2(words[w] >> 16));
          }
        }
      }

      if constexpr (decltype(masked)::value) {
        mask_tile_scores(s, p, row0 + g, n0 + row_base + 2 * t, group, context, q_start, num_rows,
                         kv_end, spans);
      }
      float alpha[2];
      online_softmax_tile(s, m_run, l_run, alpha, scale_log2);
      if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
#pragma unroll
          for (int i = 0; i < 4; ++i) o_acc[dt][i] *= alpha[i / 2];
        }
      }

      // P V, 16 keys a step: thread (g, t) reads head dims 16g .. 16g + 15 of keys 2t, 2t + 1,
      // 2t + 8, 2t + 9 and pairs each dim's bytes by key into the B fragments of n-tiles 0-15.
#pragma unroll
      for (int kk = 0; kk < kNT / 2; ++kk) {
        uint32_t pa[4];
        pa[0] = pack2<__half>(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = pack2<__half>(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = pack2<__half>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = pack2<__half>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        const int key0 = row_base + kk * 16 + 2 * t;
        const uint4 v0 = *reinterpret_cast<const uint4*>(v_s + fp8_chunk_offset(key0, g));
        const uint4 v1 = *reinterpret_cast<const uint4*>(v_s + fp8_chunk_offset(key0 + 1, g));
        const uint4 v8 = *reinterpret_cast<const uint4*>(v_s + fp8_chunk_offset(key0 + 8, g));
        const uint4 v9 = *reinterpret_cast<const uint4*>(v_s + fp8_chunk_offset(key0 + 9, g));
        const uint32_t lo0[4] = {v0.x, v0.y, v0.z, v0.w}, lo1[4] = {v1.x, v1.y, v1.z, v1.w};
        const uint32_t hi0[4] = {v8.x, v8.y, v8.z, v8.w}, hi1[4] = {v9.x, v9.y, v9.z, v9.w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          // Bytes (key a, dim d), (key b, dim d), (a, d + 1), (b, d + 1): two e4m3 key pairs.
          const uint32_t lo_01 = __byte_perm(lo0[w], lo1[w], 0x5140);
          const uint32_t lo_23 = __byte_perm(lo0[w], lo1[w], 0x7362);
          const uint32_t hi_01 = __byte_perm(hi0[w], hi1[w], 0x5140);
          const uint32_t hi_23 = __byte_perm(hi0[w], hi1[w], 0x7362);
          mma_16816<__half>(o_acc[4 * w], pa, e4m3x2_to_half2(lo_01), e4m3x2_to_half2(hi_01));
          mma_16816<__half>(o_acc[4 * w + 1], pa, e4m3x2_to_half2(lo_01 >> 16),
                            e4m3x2_to_half2(hi_01 >> 16));
          mma_16816<__half>(o_acc[4 * w + 2], pa, e4m3x2_to_half2(lo_23), e4m3x2_to_half2(hi_23));
          mma_16816<__half>(o_acc[4 * w + 3], pa, e4m3x2_to_half2(lo_23 >> 16),
                            e4m3x2_to_half2(hi_23 >> 16));
        }
      }
    };
    if (n0 + kBlockN > min_hi || n0 < max_lo)
      compute_tile(std::true_type{});
    else
      compute_tile(std::false_type{});
    __syncwarp();  // this stage's rows are reloaded kStages - 1 tiles on
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffff, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffff, l_run[h], 2);
  }
  // Accumulator n-tile dt, element c of a pair holds head dim 32t + 16c + dt.
  auto column = [](int dt, int lane_, int c) { return 32 * (lane_ % 4) + 16 * c + dt; };
  merge_key_slices<T, 128, 128, kWarpsN, Cfg::kThreads>(p, reinterpret_cast<float*>(s_f8), o_acc,
                                                        m_run, l_run, row0, num_rows, q_start,
                                                        kv_head, wn, out_scale, column);
  if (p.num_splits > 1 && p.split_counters != nullptr) {
    merge_splits_if_last<T, 128, Cfg::kThreads>(p, row0, min(row0 + Cfg::kBlockM, num_rows),
                                                q_start, kv_head);
  }
}

}  // namespace mmcore::kernels
