// Epilogue of the decode variant of attention_kernel: its warps each hold the online-softmax
// state of one slice of the keys for the same 16 rows; this merges them.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/mma_utils.cuh"

namespace mmcore::kernels {

// Column of accumulator element (n-tile dt, pair element c) of lane `lane` in mma's C layout.
struct MmaColumn {
  __device__ __forceinline__ int operator()(int dt, int lane, int c) const {
    return dt * 8 + 2 * (lane % 4) + c;
  }
};

// Merges the per-warp (m, l, O) states of kWarpsN key slices of one 16-row tile through shared
// memory (`smem`, free K/V buffers) and writes the normalized rows (or split partials) of the
// first kHeadDim of kPadDim columns, times `out_scale` (an FP8 cache's V scale, else 1).
// `column(dt, lane, c)` says which head dim o_acc[dt][2h + c] holds (kernels may permute them).
template <typename T, int kHeadDim, int kPadDim, int kWarpsN, int kThreads,
          typename Column = MmaColumn>
__device__ __forceinline__ void merge_key_slices(const AttentionParams& p, float* smem,
                                                 const float (&o_acc)[kPadDim / 8][4],
                                                 const float (&m_run)[2], const float (&l_run)[2],
                                                 int row0, int num_rows, int q_start, int kv_head,
                                                 int wn, float out_scale, Column column = {}) {
  constexpr int kDT = kPadDim / 8;
  const int tid = threadIdx.x, lane = tid % 32;
  constexpr int kOStride = kPadDim + 2;
  float* s_o = smem;                            // [kWarpsN][16][kOStride]
  float* s_ml = s_o + kWarpsN * 16 * kOStride;  // [kWarpsN][16][2]
  __syncthreads();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = lane / 4 + h * 8;
#pragma unroll
    for (int dt = 0; dt < kDT; ++dt) {
      s_o[(wn * 16 + r) * kOStride + column(dt, lane, 0)] = o_acc[dt][2 * h];
      s_o[(wn * 16 + r) * kOStride + column(dt, lane, 1)] = o_acc[dt][2 * h + 1];
    }
    if (lane % 4 == 0) {
      s_ml[(wn * 16 + r) * 2] = m_run[h];
      s_ml[(wn * 16 + r) * 2 + 1] = l_run[h];
    }
  }
  __syncthreads();
  for (int e = tid; e < 16 * (kHeadDim / 2); e += kThreads) {
    const int r = e / (kHeadDim / 2), d = 2 * (e % (kHeadDim / 2));
    const int row = row0 + r;
    if (row >= num_rows) continue;
    float m_tot = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarpsN; ++w) m_tot = fmaxf(m_tot, s_ml[(w * 16 + r) * 2]);
    float l_tot = 0.f, o0 = 0.f, o1 = 0.f;
    if (m_tot != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarpsN; ++w) {
        const float scale = exp2f(s_ml[(w * 16 + r) * 2] - m_tot);
        l_tot += s_ml[(w * 16 + r) * 2 + 1] * scale;
        o0 += s_o[(w * 16 + r) * kOStride + d] * scale;
        o1 += s_o[(w * 16 + r) * kOStride + d + 1] * scale;
      }
    }
    const float inv = l_tot > 0.f ? out_scale / l_tot : 0.f;
    const int token = q_start + row / p.group;
    const int head = kv_head * p.group + row % p.group;
    const int64_t slot =
        (static_cast<int64_t>(blockIdx.z) * p.num_tokens + token) * p.num_q_heads + head;
    if (p.num_splits > 1) {
      *reinterpret_cast<float2*>(p.partial_out + slot * kHeadDim + d) =
          make_float2(o0 * inv, o1 * inv);
      if (d == 0) p.partial_lse[slot] = l_tot > 0.f ? m_tot + __log2f(l_tot) : -INFINITY;
    } else {
      T* dst = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head + d;
      *reinterpret_cast<uint32_t*>(dst) = pack2<T>(o0 * inv, o1 * inv);
    }
  }
}

// Splits whose partials a thread loads before using any (one L2 round trip a batch).
inline constexpr int kMergeBatch = 8;

__device__ __forceinline__ float scaled(float a, float r) { return a * r; }
__device__ __forceinline__ float4 scaled(float4 a, float r) {
  return make_float4(a.x * r, a.y * r, a.z * r, a.w * r);
}
__device__ __forceinline__ float fma_into(float w, float o, float a) { return fmaf(w, o, a); }
__device__ __forceinline__ float4 fma_into(float w, float4 o, float4 a) {
  return make_float4(fmaf(w, o.x, a.x), fmaf(w, o.y, a.y), fmaf(w, o.z, a.z), fmaf(w, o.w, a.w));
}

// The merged output (V = float or float4: head dims d ...) of one (token, head) slot from its
// splits' partials (normalized outputs `partial_out` [split][slot][head_dim], log2-sum-exps
// `partial_lse` [split][slot]): the weights are exp2(lse - running max), the running sums
// rescaled when a batch raises the max. The in-kernel merge and the combine kernel both call it,
// so they give the same bits.
template <typename V>
__device__ __forceinline__ V merge_split_partials(const float* partial_out,
                                                  const float* partial_lse, int64_t stride_split,
                                                  int64_t slot, int head_dim, int d,
                                                  int num_splits) {
  float m = -INFINITY, total = 0.f;
  V acc{};
  for (int s0 = 0; s0 < num_splits; s0 += kMergeBatch) {
    float lse[kMergeBatch];
    V o[kMergeBatch];
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) {
      const int64_t at = (s0 + i) * stride_split + slot;
      const bool in = s0 + i < num_splits;
      lse[i] = in ? __ldcg(partial_lse + at) : -INFINITY;
      o[i] = in ? __ldcg(reinterpret_cast<const V*>(partial_out + at * head_dim + d)) : V{};
    }
    float m_new = m;
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) m_new = fmaxf(m_new, lse[i]);
    if (m_new == -INFINITY) continue;  // no keys in these splits (yet)
    const float rescale = exp2f(m - m_new);
    total *= rescale;
    acc = scaled(acc, rescale);
#pragma unroll
    for (int i = 0; i < kMergeBatch; ++i) {
      const float w = exp2f(lse[i] - m_new);
      total += w;
      acc = fma_into(w, o[i], acc);
    }
    m = m_new;
  }
  return total > 0.f ? scaled(acc, 1.f / total) : acc;
}

// Split-KV without a combine launch: every split CTA of a (row tile, KV head) counts itself in
// once its partials are written; the last one merges all splits' partials of the tile's rows
// [row_begin, row_end), four head dims a thread (as combine_splits_kernel does), and resets the
// counter for the next launch or graph replay.
template <typename T, int kHeadDim, int kThreads>
__device__ __forceinline__ void merge_splits_if_last(const AttentionParams& p, int row_begin,
                                                     int row_end, int q_start, int kv_head) {
  static_assert(kHeadDim % 4 == 0, "a thread merges four head dims");
  __shared__ bool s_last;
  __threadfence();  // this CTA's partials before its count
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t* counter = p.split_counters + blockIdx.x * gridDim.y + blockIdx.y;
    s_last = atomicAdd(counter, 1u) == static_cast<uint32_t>(p.num_splits - 1);
    if (s_last) *counter = 0u;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();  // the other splits' partials after their counts
  const int64_t stride_split = static_cast<int64_t>(p.num_tokens) * p.num_q_heads;
  constexpr int kQuads = kHeadDim / 4;
  for (int e = threadIdx.x; e < (row_end - row_begin) * kQuads; e += kThreads) {
    const int row = row_begin + e / kQuads, d = 4 * (e % kQuads);
    const int token = q_start + row / p.group;
    const int head = kv_head * p.group + row % p.group;
    const int64_t slot = static_cast<int64_t>(token) * p.num_q_heads + head;
    const float4 o = merge_split_partials<float4>(p.partial_out, p.partial_lse, stride_split, slot,
                                                  kHeadDim, d, p.num_splits);
    T* dst = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head + d;
    reinterpret_cast<uint32_t*>(dst)[0] = pack2<T>(o.x, o.y);
    reinterpret_cast<uint32_t*>(dst)[1] = pack2<T>(o.z, o.w);
  }
}

}  // namespace mmcore::kernels
