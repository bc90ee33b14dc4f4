// Small companions of attention_kernel: the row-tile prefix sums that map CTAs to sequences,
// and the split-KV combine that merges per-split partial outputs by their log2-sum-exp.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_config.cuh"
#include "kernels/attention_merge.cuh"
#include "kernels/attention_params.h"
#include "kernels/mma_utils.cuh"

namespace mmcore::kernels {

// One warp: tile_offsets[b + 1] = sum over b' <= b of ceil(rows(b') / block_m), rows(b) =
// num_q(b) * group, counting only sequences whose rows lie in [min_rows, max_rows].
// With `work_counter`, also zeroes tile_offsets[num_seqs + 1] (the Hopper kernel's count of
// claimed work items).
static __global__ void row_tile_offsets_kernel(const int32_t* __restrict__ query_start_loc,
                                               int num_seqs, int group, int block_m, int min_rows,
                                               int max_rows, bool work_counter,
                                               int32_t* __restrict__ tile_offsets) {
  const int lane = threadIdx.x;
  int running = 0;
  if (lane == 0) tile_offsets[0] = 0;
  if (lane == 0 && work_counter) tile_offsets[num_seqs + 1] = 0;
  for (int base = 0; base < num_seqs; base += 32) {
    const int b = base + lane;
    int tiles = 0;
    if (b < num_seqs) {
      const int rows = (query_start_loc[b + 1] - query_start_loc[b]) * group;
      const bool mine = rows >= min_rows && rows <= max_rows;
      tiles = mine && rows > 0 ? (rows + block_m - 1) / block_m : 0;
    }
    int inclusive = tiles;
#pragma unroll
    for (int step = 1; step < 32; step *= 2) {
      const int other = __shfl_up_sync(0xffffffff, inclusive, step);
      if (lane >= step) inclusive += other;
    }
    if (b < num_seqs) tile_offsets[b + 1] = running + inclusive;
    running += __shfl_sync(0xffffffff, inclusive, 31);
  }
}

// Launches row_tile_offsets_kernel for tiles of block_m rows and sets max_tiles to the grid's x
// extent: an upper bound of sum_b ceil(rows_b / block_m) (surplus CTAs exit at once).
static inline cudaError_t launch_row_tile_offsets(const AttentionParams& p, int block_m,
                                                  cudaStream_t stream, int& max_tiles,
                                                  bool work_counter = false) {
  row_tile_offsets_kernel<<<1, 32, 0, stream>>>(p.query_start_loc, p.num_seqs, p.group, block_m,
                                                p.min_rows, p.max_rows, work_counter,
                                                p.tile_offsets);
  max_tiles = ceil_div(p.num_tokens * p.group, block_m) + p.num_seqs;
  return cudaGetLastError();
}

// One CTA per (token, head): out = sum_s exp2(lse_s - lse) * partial_s over the splits, for the
// tokens of sequences whose rows lie in [p.min_rows, p.max_rows] (the launch's own).
template <typename T>
__global__ void combine_splits_kernel(const AttentionParams p, int head_dim) {
  const int token = blockIdx.x, head = blockIdx.y;
  if (p.min_rows > 0 || p.max_rows < 0x7fffffff) {
    const int seq = last_at_most(p.query_start_loc, p.num_seqs, token);
    const int rows = (p.query_start_loc[seq + 1] - p.query_start_loc[seq]) * p.group;
    if (rows < p.min_rows || rows > p.max_rows) return;
  }
  const int64_t stride_split = static_cast<int64_t>(p.num_tokens) * p.num_q_heads;
  const int64_t slot = static_cast<int64_t>(token) * p.num_q_heads + head;
  T* dst = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    dst[d] = static_cast<T>(merge_split_partials<float>(p.partial_out, p.partial_lse, stride_split,
                                                        slot, head_dim, d, p.num_splits));
  }
}

}  // namespace mmcore::kernels
