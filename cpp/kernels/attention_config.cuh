// Tile shapes and shared-memory layout of attention_kernel per (dtype, head dim, warp layout,
// FP8 K/V): kept apart from the kernel so the launchers' sizes and the kernel's agree.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// The largest b in [0, count) with values[b] <= x, for ascending values with values[0] <= x
// (a row tile's or token's sequence from the prefix sums of tiles or queries).
__device__ __forceinline__ int last_at_most(const int32_t* values, int count, int x) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (values[mid] <= x)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Keys [lo, hi) query row `row` of a sequence sees: causal up to its own position (or to its
// image span's end, with `spans`), never past kv_end; not before its sliding window.
struct KeyRange {
  int lo, hi;
};
__device__ __forceinline__ KeyRange row_key_range(const AttentionParams& p, int row, int group,
                                                  int context, int q_start, int num_rows,
                                                  int kv_end, bool spans) {
  const int pos = context + row / group;
  int last = pos;  // last visible key (causal)
  if (spans && row < num_rows) last = max(last, p.attend_until[q_start + row / group]);
  return {p.sliding_window > 0 ? pos - p.sliding_window + 1 : 0,
          p.causal ? min(last + 1, kv_end) : kv_end};
}

template <typename T, int kHeadDim, int kWarpsM, int kWarpsN, int kMFrags, bool kFp8 = false>
struct AttentionConfig {
  static_assert(kHeadDim % 8 == 0 && kHeadDim <= 256, "head dim must be a multiple of 8, <= 256");
  // mma k-steps are 16 wide: a head dim like 72 runs as 80 with zero columns in shared memory
  // (zero Q/K columns add nothing to the scores, zero V columns give outputs never written).
  static constexpr int kPadDim = (kHeadDim + 15) / 16 * 16;
  static constexpr int kRowsPerWarp = 16 * kMFrags;  // each warp: kMFrags 16-row mma tiles
  static constexpr int kBlockM = kRowsPerWarp * kWarpsM;
  // Q fragments stay in registers unless that would crowd out the accumulators.
  static constexpr bool kQInRegs = kMFrags * kPadDim <= 128;
  // Keys per K/V tile (32 for head dim 128 removed its register spills but ran no faster); head
  // dim 256 takes 32 so its tiles fit an sm80's shared memory.
  static constexpr int kBlockN = kPadDim > 128 ? 32 : 64;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kKeysPerWarp = kBlockN / kWarpsN;
  static_assert(kKeysPerWarp % 16 == 0, "each warp needs whole 16-key steps");
  static constexpr int kRowStride = kPadDim + 8;     // 16 bytes of padding: conflict-free ldmatrix
  static constexpr int kChunksPerRow = kPadDim / 8;  // 16-byte chunks of a T row
  static constexpr int kRealChunks = kHeadDim / 8;   // chunks holding data; the rest are zeros
  static constexpr int kQElems = kBlockM * kRowStride;
  static constexpr int kTileElems = kBlockN * kRowStride;
  // K/V pipeline depth: the decode variant (few rows, memory-bound) keeps more tiles in flight.
  static constexpr int kStages = kWarpsN > 1 ? 3 : 2;
  // FP8 K/V: cp.async lands e4m3 tiles in their own stages (8 or 16 bytes per copy: 72-wide rows
  // are 8-byte aligned only) and each step converts one into the single T tile pair.
  static constexpr int kF8Chunk = kHeadDim % 16 == 0 ? 16 : 8;
  static constexpr int kF8ChunksPerRow = kPadDim / kF8Chunk;
  static constexpr int kF8RealChunks = kHeadDim / kF8Chunk;
  static constexpr int kF8TileBytes = kBlockN * kPadDim;     // rows of kPadDim bytes, no padding
  static constexpr int kComputeStages = kFp8 ? 1 : kStages;  // T tile pairs held
  static constexpr size_t kKvBytes =
      2 * kComputeStages * kTileElems * sizeof(T) + (kFp8 ? 2 * kStages * kF8TileBytes : 0);
  static constexpr size_t kSmemBytes = kQElems * sizeof(T) + kKvBytes;
  // Cross-warp merge of kWarpsN key slices reuses the K/V buffers: per slice 16 rows of
  // kPadDim + 2 partial outputs, then 16 (m, l) pairs.
  static constexpr size_t kMergeBytes = kWarpsN * 16 * (kPadDim + 4) * sizeof(float);
  static_assert(kWarpsN == 1 || kMFrags == 1, "key-sliced warps hold one 16-row tile");
  static_assert(kWarpsN == 1 || kMergeBytes <= kKvBytes, "merge buffer");
  static_assert(kSmemBytes <= 160 * 1024, "shared memory beyond an sm80's 163 KB");
};

}  // namespace mmcore::kernels
