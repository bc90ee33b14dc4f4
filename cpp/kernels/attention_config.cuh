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

// One row tile of a launch: its sequence, its rows and the keys they can see.
struct RowTile {
  int seq, q_start, num_q, seq_len, num_rows, row0, context;
  int first_tok, last_tok;  // query tokens (within the sequence) of the tile's first / last row
  int kv_lo;                // first key any row sees (keys below may sit in released blocks)
  int kv_begin;             // kv_lo rounded down to whole key tiles: where the tile loop starts
  int kv_end;               // one past the last key any row sees
  int min_hi, max_lo;       // every row sees [max_lo, min_hi): key tiles inside need no mask
  bool spans;               // causal with image spans (row_key_range's `spans`)
};

// Locates row tile `tile` of the prefix sums in p.tile_offsets (or, with one_tile_per_seq,
// sequence `tile`) for tiles of block_m rows and keys in tiles of block_n; false when the tile
// has no rows in this launch. Warp-collective: every lane of the calling warp must call it with
// the same tile (image spans widen kv_end by a warp reduction over the tile's tokens).
__device__ __forceinline__ bool locate_row_tile(const AttentionParams& p, int tile, int block_m,
                                                int block_n, RowTile& t) {
  t.seq = tile;
  if (!p.one_tile_per_seq) {
    if (tile >= p.tile_offsets[p.num_seqs]) return false;
    t.seq = last_at_most(p.tile_offsets, p.num_seqs, tile);
  } else if (tile >= p.num_seqs) {
    return false;
  }
  t.q_start = p.query_start_loc[t.seq];
  t.num_q = p.query_start_loc[t.seq + 1] - t.q_start;
  t.seq_len = p.seq_lens != nullptr ? p.seq_lens[t.seq] : t.num_q;
  t.num_rows = t.num_q * p.group;
  if (t.num_rows < p.min_rows || t.num_rows > p.max_rows) return false;  // the other launch's
  t.row0 = p.one_tile_per_seq ? 0 : (tile - p.tile_offsets[t.seq]) * block_m;
  if (t.row0 >= t.num_rows) return false;  // a sequence without queries this step
  t.context = t.seq_len - t.num_q;         // position of the first query token
  t.first_tok = t.row0 / p.group;
  t.last_tok = (min(t.row0 + block_m, t.num_rows) - 1) / p.group;
  t.kv_end = p.causal ? min(t.seq_len, t.context + t.last_tok + 1) : t.seq_len;
  t.spans = p.causal && p.attend_until != nullptr;
  if (t.spans) {
    // Image spans open keys past the diagonal: the tile reads up to its rows' furthest bound.
    const int lane = threadIdx.x % 32;
    int until = -1;
    for (int tok = t.first_tok + lane; tok <= t.last_tok; tok += 32)
      until = max(until, p.attend_until[t.q_start + tok]);
    until = __reduce_max_sync(0xffffffff, until);
    t.kv_end = min(t.seq_len, max(t.kv_end, until + 1));
  }
  t.kv_lo = p.sliding_window > 0 ? max(0, t.context + t.first_tok - p.sliding_window + 1) : 0;
  t.kv_begin = t.kv_lo / block_n * block_n;
  // A row's bound is never below its own position, so spans only ever widen min_hi's keys.
  t.min_hi = p.causal ? min(t.kv_end, t.context + t.first_tok + 1) : t.kv_end;
  t.max_lo = p.sliding_window > 0 ? t.context + t.last_tok - p.sliding_window + 1 : 0;
  return true;
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
  // K/V pipeline depth: the decode variant (few rows, memory-bound) keeps more tiles in flight,
  // except over FP8 caches, where two e4m3 stages fit three CTAs an SM (88 -> 72 KB at head dim
  // 128) to hide the conversion's latency.
  static constexpr int kStages = kWarpsN > 1 && !kFp8 ? 3 : 2;
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
