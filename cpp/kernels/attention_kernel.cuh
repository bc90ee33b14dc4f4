// Flash-attention forward over one flattened varlen batch, on mma.sync m16n8k16 tensor cores.
//
// One CTA owns a tile of kBlockM "rows" of one sequence and one KV head, where row r is query
// token r / group with query head kv_head * group + r % group: the query heads of a GQA group
// share every K/V tile they load. Warps are laid out kWarpsM (16 * kMFrags rows each) by kWarpsN
// (each a slice of the keys of a tile); with kWarpsN > 1 each warp loads its own slice's rows and
// the slices merge through shared memory at the end (decode: few rows, long contexts), so the
// tile loop synchronises warps only. K/V tiles of 64 keys are multi-buffered with cp.async.
// Keys come either from a paged cache through block tables or from packed [T, Hkv, D] rows;
// paged K/V may be FP8 (e4m3, converted to T in shared memory, per-head scales folded in).
// Softmax is online, in float32, in the log2 domain.
#pragma once
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

template <typename T, int kHeadDim, int kWarpsM, int kWarpsN, int kMFrags, bool kPaged, bool kFp8>
__global__ void __launch_bounds__(
    AttentionConfig<T, kHeadDim, kWarpsM, kWarpsN, kMFrags, kFp8>::kThreads)
    attention_kernel(const AttentionParams p) {
  using Cfg = AttentionConfig<T, kHeadDim, kWarpsM, kWarpsN, kMFrags, kFp8>;
  pdl_wait();  // row-tile offsets, q and the cache come from earlier kernels
  pdl_launch_dependents();
  static_assert(kPaged || !kFp8, "FP8 K/V come from the paged cache only");
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kStride = Cfg::kRowStride;
  constexpr int kNT = Cfg::kKeysPerWarp / 8;  // 8-key accumulator tiles per warp
  constexpr int kDT = Cfg::kPadDim / 8;       // 8-wide output tiles (padding included)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* s_q = reinterpret_cast<T*>(smem_raw);
  T* s_k = s_q + Cfg::kQElems;                           // kComputeStages tiles
  T* s_v = s_k + Cfg::kComputeStages * Cfg::kTileElems;  // kComputeStages tiles
  // FP8 only: kStages (K tile, V tile) pairs of e4m3 bytes.
  uint8_t* s_f8 = reinterpret_cast<uint8_t*>(s_v + Cfg::kComputeStages * Cfg::kTileElems);

  // Which sequence and row tile this CTA owns, and the keys its rows see.
  // Causal: heavy (late) row tiles first, so the light ones fill the tail of the grid.
  RowTile rt;
  if (!locate_row_tile(p, p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x, kBlockM, kBlockN, rt))
    return;
  const int q_start = rt.q_start, num_rows = rt.num_rows, row0 = rt.row0;
  const int context = rt.context, kv_begin = rt.kv_begin, kv_lo = rt.kv_lo, kv_end = rt.kv_end;
  const int min_hi = rt.min_hi, max_lo = rt.max_lo;
  const bool spans = rt.spans;
  const int seq = rt.seq, group = p.group;
  const int kv_head = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = warp % kWarpsM, wn = warp / kWarpsM;

  // Key tiles split evenly (in whole tiles) over blockIdx.z.
  const int kv_tiles = ceil_div(max(kv_end - kv_begin, 0), kBlockN);
  const int tiles_per_split = ceil_div(kv_tiles, p.num_splits);
  const int tile_begin = blockIdx.z * tiles_per_split;
  const int n_tiles = max(0, min(kv_tiles, tile_begin + tiles_per_split) - tile_begin);

  // FP8: the per-head scales fold into the softmax scale (K) and the output (V).
  float scale_log2 = p.scale_log2, out_scale = 1.f;
  if constexpr (kFp8) {
    scale_log2 *= p.k_scale[kv_head];
    out_scale = p.v_scale[kv_head];
  }

  const T* q_base = static_cast<const T*>(p.q);
  for (int c = tid; c < kBlockM * Cfg::kChunksPerRow; c += Cfg::kThreads) {
    const int r = c / Cfg::kChunksPerRow, ch = c % Cfg::kChunksPerRow;
    const int row = row0 + r;
    const bool valid = row < num_rows && ch < Cfg::kRealChunks;
    const T* src = q_base;
    if (valid) {
      src += (q_start + row / group) * p.q_stride_token +
             (kv_head * group + row % group) * p.q_stride_head + ch * 8;
    }
    cp_async_16(s_q + r * kStride + ch * 8, src, valid);
  }
  cp_async_commit();

  // Key-sliced warps (decode) read only their own keys of each K/V tile, so each warp loads (and
  // for FP8 converts) its own rows and the tile loop needs no CTA barrier, only warp ones; the
  // other variants share every row among all warps.
  constexpr bool kWarpOwnsKeys = kWarpsN > 1;
  constexpr int kLoaders = kWarpOwnsKeys ? 32 : Cfg::kThreads;
  constexpr int kLoadRows = kWarpOwnsKeys ? Cfg::kKeysPerWarp : kBlockN;
  const int loader = kWarpOwnsKeys ? lane : tid;
  const int row_base = kWarpOwnsKeys ? wn * Cfg::kKeysPerWarp : 0;
  auto tile_sync = [] {
    if constexpr (kWarpOwnsKeys) {
      __syncwarp();
    } else {
      __syncthreads();
    }
  };
  // Each loader copies chunk column `ch` of rows r, r + kRowsPerPass, ... of every K/V tile, so
  // the per-tile address work is one multiply-add per row (the chunk loop of a general thread
  // count would redo the index math per chunk).
  constexpr int kLoadChunks = kFp8 ? Cfg::kF8ChunksPerRow : Cfg::kChunksPerRow;
  constexpr int kLoadReal = kFp8 ? Cfg::kF8RealChunks : Cfg::kRealChunks;
  constexpr int kChunkElems = kFp8 ? Cfg::kF8Chunk : 8;
  constexpr int kChunks = kLoadRows * kLoadChunks;
  constexpr bool kFixedColumn = kLoaders % kLoadChunks == 0;
  constexpr int kRowsPerPass = kFixedColumn ? kLoaders / kLoadChunks : 1;
  const int64_t k_head_off = kv_head * p.k_stride_head;
  const int64_t v_head_off = kv_head * p.v_stride_head;
  // Element (= byte for FP8) offsets of row `key`'s head slice; copies chunk `ch` to stage `stage`.
  auto copy_row_chunk = [&](int stage, int r, int key, int ch) {
    const bool valid = key < kv_end && key >= kv_lo && ch < kLoadReal;
    int64_t k_off = 0, v_off = 0;
    if (valid) {
      if constexpr (kPaged) {
        // Power-of-two block sizes (the usual case) avoid an integer division per row.
        const int block_idx = p.block_shift >= 0 ? key >> p.block_shift : key / p.block_size;
        const int in_block = key - block_idx * p.block_size;
        const int64_t block = p.block_tables[seq * p.block_table_stride + block_idx];
        k_off = block * p.k_stride_block + in_block * p.k_stride_token + k_head_off;
        v_off = block * p.v_stride_block + in_block * p.v_stride_token + v_head_off;
      } else {
        k_off = static_cast<int64_t>(q_start + key) * p.k_stride_token + k_head_off;
        v_off = static_cast<int64_t>(q_start + key) * p.v_stride_token + v_head_off;
      }
      k_off += ch * kChunkElems;
      v_off += ch * kChunkElems;
    }
    if constexpr (kFp8) {
      uint8_t* dk = s_f8 + stage * 2 * Cfg::kF8TileBytes + r * Cfg::kPadDim + ch * kChunkElems;
      uint8_t* dv = dk + Cfg::kF8TileBytes;
      const uint8_t* k_src = static_cast<const uint8_t*>(p.k) + k_off;
      const uint8_t* v_src = static_cast<const uint8_t*>(p.v) + v_off;
      if constexpr (kChunkElems == 16) {
        cp_async_16(dk, k_src, valid);
        cp_async_16(dv, v_src, valid);
      } else {
        cp_async_8(dk, k_src, valid);
        cp_async_8(dv, v_src, valid);
      }
    } else {
      T* dk = s_k + stage * Cfg::kTileElems + r * kStride + ch * 8;
      T* dv = s_v + stage * Cfg::kTileElems + r * kStride + ch * 8;
      cp_async_16(dk, static_cast<const T*>(p.k) + k_off, valid);
      cp_async_16(dv, static_cast<const T*>(p.v) + v_off, valid);
    }
  };
  auto load_kv = [&](int kv_tile, int stage) {
    const int n0 = kv_begin + kv_tile * kBlockN + row_base;
    if constexpr (kFixedColumn) {
      const int r0 = loader / kLoadChunks, ch = loader % kLoadChunks;
#pragma unroll
      for (int r = r0; r < kLoadRows; r += kRowsPerPass)
        copy_row_chunk(stage, row_base + r, n0 + r, ch);
    } else {
      for (int c = loader; c < kChunks; c += kLoaders) {
        const int r = c / kLoadChunks, ch = c % kLoadChunks;
        copy_row_chunk(stage, row_base + r, n0 + r, ch);
      }
    }
  };
  // FP8: e4m3 stage -> the T tile pair (exact conversion; the scales are applied elsewhere).
  auto convert_kv = [&](int stage) {
    constexpr int kGroups = Cfg::kPadDim / 8;
    const uint8_t* fk = s_f8 + stage * 2 * Cfg::kF8TileBytes;
    const uint8_t* fv = fk + Cfg::kF8TileBytes;
    for (int c = loader; c < kLoadRows * kGroups; c += kLoaders) {
      const int r = row_base + c / kGroups, g = c % kGroups;
      const uint2 kr = *reinterpret_cast<const uint2*>(fk + r * Cfg::kPadDim + g * 8);
      const uint2 vr = *reinterpret_cast<const uint2*>(fv + r * Cfg::kPadDim + g * 8);
      *reinterpret_cast<uint4*>(s_k + r * kStride + g * 8) = fp8x8_to<T>(kr);
      *reinterpret_cast<uint4*>(s_v + r * kStride + g * 8) = fp8x8_to<T>(vr);
    }
  };

  // Prologue: tiles 0 .. kStages - 2 in flight (one commit group each), then wait for Q only.
#pragma unroll
  for (int st = 0; st < Cfg::kStages - 1; ++st) {
    if (st < n_tiles) load_kv(tile_begin + st, st);
    cp_async_commit();
  }
  cp_async_wait<Cfg::kStages - 1>();
  __syncthreads();

  constexpr int kKSteps = Cfg::kPadDim / 16;
  const int warp_row0 = wm * Cfg::kRowsPerWarp;  // first row of this warp within the CTA tile
  // Q fragment (16 rows x 16 dims) of m-tile mf, k-step ks, straight from shared memory.
  auto load_q = [&](uint32_t(&frag)[4], int mf, int ks) {
    ldmatrix_x4(frag, s_q + (warp_row0 + mf * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kStride +
                          ks * 16 + (lane / 16) * 8);
  };
  uint32_t q_frag[Cfg::kQInRegs ? kMFrags : 1][Cfg::kQInRegs ? kKSteps : 1][4];
  if constexpr (Cfg::kQInRegs) {
#pragma unroll
    for (int mf = 0; mf < kMFrags; ++mf) {
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) load_q(q_frag[mf][ks], mf, ks);
    }
  }

  float o_acc[kMFrags][kDT][4];
  float m_run[kMFrags][2], l_run[kMFrags][2];
#pragma unroll
  for (int mf = 0; mf < kMFrags; ++mf) {
#pragma unroll
    for (int i = 0; i < kDT; ++i)
      o_acc[mf][i][0] = o_acc[mf][i][1] = o_acc[mf][i][2] = o_acc[mf][i][3] = 0.f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m_run[mf][h] = -INFINITY;
      l_run[mf][h] = 0.f;
    }
  }
  const bool warp_active = row0 + warp_row0 < num_rows;

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j % Cfg::kStages;
    const int ahead = j + Cfg::kStages - 1;
    if (ahead < n_tiles) load_kv(tile_begin + ahead, ahead % Cfg::kStages);
    cp_async_commit();
    cp_async_wait<Cfg::kStages - 1>();
    tile_sync();
    if constexpr (kFp8) {
      convert_kv(stage);
      tile_sync();
    }
    const int compute_stage = kFp8 ? 0 : stage;
    // Tiles wholly inside every row's key range skip the per-element mask (own code path).
    auto compute_tile = [&](auto masked) {
      const int n0 = kv_begin + (tile_begin + j) * kBlockN;
      const int warp_key0 = wn * Cfg::kKeysPerWarp;
      const T* k_s = s_k + compute_stage * Cfg::kTileElems + warp_key0 * kStride;
      const T* v_s = s_v + compute_stage * Cfg::kTileElems + warp_key0 * kStride;

      float s[kMFrags][kNT][4];
#pragma unroll
      for (int mf = 0; mf < kMFrags; ++mf) {
#pragma unroll
        for (int i = 0; i < kNT; ++i) s[mf][i][0] = s[mf][i][1] = s[mf][i][2] = s[mf][i][3] = 0.f;
      }
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) {
        uint32_t qf[kMFrags][4];
#pragma unroll
        for (int mf = 0; mf < kMFrags; ++mf) {
          if constexpr (Cfg::kQInRegs) {
#pragma unroll
            for (int r = 0; r < 4; ++r) qf[mf][r] = q_frag[mf][ks][r];
          } else {
            load_q(qf[mf], mf, ks);
          }
        }
#pragma unroll
        for (int nt = 0; nt < kNT; nt += 2) {
          uint32_t kb[4];
          ldmatrix_x4(kb, k_s + (nt * 8 + lane % 8 + (lane / 16) * 8) * kStride + ks * 16 +
                              ((lane / 8) % 2) * 8);
#pragma unroll
          for (int mf = 0; mf < kMFrags; ++mf) {
            mma_16816<T>(s[mf][nt], qf[mf], kb[0], kb[1]);
            mma_16816<T>(s[mf][nt + 1], qf[mf], kb[2], kb[3]);
          }
        }
      }

      float alpha[kMFrags][2];  // per-row rescale of the running sums and O
#pragma unroll
      for (int mf = 0; mf < kMFrags; ++mf) {
        if constexpr (decltype(masked)::value) {
          // Key bounds of this thread's rows (lane / 4 and lane / 4 + 8 of the 16-row tile),
          // recomputed here rather than held in registers across the loop.
          mask_tile_scores(s[mf], p, row0 + warp_row0 + mf * 16 + lane / 4,
                           n0 + warp_key0 + 2 * (lane % 4), group, context, q_start, num_rows,
                           kv_end, spans);
        }
        online_softmax_tile(s[mf], m_run[mf], l_run[mf], alpha[mf], scale_log2);
      }
      // Rescale O only when some row's running max moved (rare once the max settles).
      bool moved = false;
#pragma unroll
      for (int mf = 0; mf < kMFrags; ++mf) moved |= alpha[mf][0] != 1.f || alpha[mf][1] != 1.f;
      if (__any_sync(0xffffffff, moved)) {
#pragma unroll
        for (int mf = 0; mf < kMFrags; ++mf) {
#pragma unroll
          for (int dt = 0; dt < kDT; ++dt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) o_acc[mf][dt][i] *= alpha[mf][i / 2];
          }
        }
      }

#pragma unroll
      for (int kk = 0; kk < kNT / 2; ++kk) {
        uint32_t pa[kMFrags][4];
#pragma unroll
        for (int mf = 0; mf < kMFrags; ++mf) {
          pa[mf][0] = pack2<T>(s[mf][2 * kk][0], s[mf][2 * kk][1]);
          pa[mf][1] = pack2<T>(s[mf][2 * kk][2], s[mf][2 * kk][3]);
          pa[mf][2] = pack2<T>(s[mf][2 * kk + 1][0], s[mf][2 * kk + 1][1]);
          pa[mf][3] = pack2<T>(s[mf][2 * kk + 1][2], s[mf][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dt = 0; dt < kDT; dt += 2) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, v_s + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * kStride +
                                    dt * 8 + (lane / 16) * 8);
#pragma unroll
          for (int mf = 0; mf < kMFrags; ++mf) {
            mma_16816<T>(o_acc[mf][dt], pa[mf], vb[0], vb[1]);
            mma_16816<T>(o_acc[mf][dt + 1], pa[mf], vb[2], vb[3]);
          }
        }
      }
    };
    if (warp_active) {
      const int n0 = kv_begin + (tile_begin + j) * kBlockN;
      if (n0 + kBlockN > min_hi || n0 < max_lo)
        compute_tile(std::true_type{});
      else
        compute_tile(std::false_type{});
    }
    tile_sync();  // this stage's rows are reloaded kStages - 1 tiles on
  }

#pragma unroll
  for (int mf = 0; mf < kMFrags; ++mf) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      l_run[mf][h] += __shfl_xor_sync(0xffffffff, l_run[mf][h], 1);
      l_run[mf][h] += __shfl_xor_sync(0xffffffff, l_run[mf][h], 2);
    }
  }

  const bool split = p.num_splits > 1;
  auto row_target = [&](int row, int& token, int& head) {
    token = q_start + row / group;
    head = kv_head * group + row % group;
  };

  if constexpr (kWarpsN == 1) {
#pragma unroll
    for (int mf = 0; mf < kMFrags && warp_active; ++mf) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + warp_row0 + mf * 16 + lane / 4 + h * 8;
        if (row >= num_rows) continue;
        int token, head;
        row_target(row, token, head);
        const float l = l_run[mf][h];
        const float inv = l > 0.f ? out_scale / l : 0.f;
        const float lse2 = l > 0.f ? m_run[mf][h] + __log2f(l) : -INFINITY;
        const int64_t slot =
            (static_cast<int64_t>(blockIdx.z) * p.num_tokens + token) * p.num_q_heads + head;
#pragma unroll
        for (int dt = 0; dt < Cfg::kRealChunks; ++dt) {
          const int d = dt * 8 + 2 * (lane % 4);
          const float o0 = o_acc[mf][dt][2 * h] * inv, o1 = o_acc[mf][dt][2 * h + 1] * inv;
          if (split) {
            *reinterpret_cast<float2*>(p.partial_out + slot * kHeadDim + d) = make_float2(o0, o1);
          } else {
            T* dst =
                static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head + d;
            *reinterpret_cast<uint32_t*>(dst) = pack2<T>(o0, o1);
          }
        }
        if (split && lane % 4 == 0) p.partial_lse[slot] = lse2;
      }
    }
  } else {
    static_assert(kWarpsM == 1, "key-sliced warps need a single row tile");
    merge_key_slices<T, kHeadDim, Cfg::kPadDim, kWarpsN, Cfg::kThreads>(
        p, reinterpret_cast<float*>(s_k), o_acc[0], m_run[0], l_run[0], row0, num_rows, q_start,
        kv_head, wn, out_scale);
  }
  if (split && p.split_counters != nullptr) {
    merge_splits_if_last<T, kHeadDim, Cfg::kThreads>(p, row0, min(row0 + kBlockM, num_rows),
                                                     q_start, kv_head);
  }
}

}  // namespace mmcore::kernels
