// The per-tile steps the mma.sync attention kernels share, on the scores of one 16-row mma tile
// held as kNT 8-key n-tiles (element i of n-tile nt: row g + 8 * (i / 2), key 2t + (i & 1),
// with g = lane / 4 and t = lane % 4).
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention_config.cuh"
#include "kernels/attention_params.h"
#include "kernels/mma_utils.cuh"

namespace mmcore::kernels {

// Scores of keys outside each row's visible range become -inf. `row` is the tile row of this
// thread's first element (the second is row + 8); `key` is the key of element 0 of n-tile 0.
template <int kNT>
__device__ __forceinline__ void mask_tile_scores(float (&s)[kNT][4], const AttentionParams& p,
                                                 int row, int key, int group, int context,
                                                 int q_start, int num_rows, int kv_end,
                                                 bool spans) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const KeyRange keys =
        row_key_range(p, row + h * 8, group, context, q_start, num_rows, kv_end, spans);
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
      for (int i = 2 * h; i < 2 * h + 2; ++i) {
        const int k = key + nt * 8 + (i & 1);
        if (k >= keys.hi || k < keys.lo) s[nt][i] = -INFINITY;
      }
    }
  }
}

// Online softmax on raw scores (the scale folds into the exp2's FMA): s becomes P, the running
// max and sum of the thread's two rows move on, and alpha is the factor O must be scaled by.
template <int kNT>
__device__ __forceinline__ void online_softmax_tile(float (&s)[kNT][4], float (&m_run)[2],
                                                    float (&l_run)[2], float (&alpha)[2],
                                                    float scale_log2) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
    const float m_new = fmaxf(m_run[h], mx * scale_log2);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    alpha[h] = fast_exp2(m_run[h] - m_use);
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      s[nt][2 * h] = fast_exp2(fmaf(s[nt][2 * h], scale_log2, -m_use));
      s[nt][2 * h + 1] = fast_exp2(fmaf(s[nt][2 * h + 1], scale_log2, -m_use));
      sum += s[nt][2 * h] + s[nt][2 * h + 1];
    }
    l_run[h] = l_run[h] * alpha[h] + sum;
    m_run[h] = m_new;
  }
}

}  // namespace mmcore::kernels
