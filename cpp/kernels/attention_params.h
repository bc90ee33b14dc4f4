// Plain-data arguments of the attention kernels (no CUDA or torch types): raw device pointers,
// sizes and element strides, filled and validated by the launchers in attention.cu.
#pragma once
#include <cstdint>

namespace mmcore::kernels {

// Element types the kernels accept; the Python side passes these codes.
// kFloat8E4M3 only for KV caches (reshape_and_cache's cache, paged attention's K/V).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat8E4M3 = 3 };

struct AttentionParams {
  // Queries [T, Hq, D] (last dim contiguous) and the output of the same shape.
  const void* q = nullptr;
  int64_t q_stride_token = 0, q_stride_head = 0;
  void* out = nullptr;
  int64_t out_stride_token = 0, out_stride_head = 0;

  // Keys/values. Paged: [num_blocks, block_size, Hkv, D] read through block_tables.
  // Packed (varlen): [T, Hkv, D] rows shared with the queries' cu_seqlens.
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t k_stride_block = 0, k_stride_token = 0, k_stride_head = 0;
  int64_t v_stride_block = 0, v_stride_token = 0, v_stride_head = 0;
  const int32_t* block_tables = nullptr;  // [B, max_blocks] (paged only)
  int64_t block_table_stride = 0;
  int block_size = 0;
  int block_shift = -1;          // log2(block_size) when it is a power of two, else -1
  int64_t num_cache_blocks = 0;  // blocks in each paged cache (0: unknown; the TMA path needs it)
  // FP8 (e4m3) K/V: stored value * scale[kv_head] is the real one (float32 [Hkv] each).
  bool kv_fp8 = false;
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;

  const int32_t* query_start_loc = nullptr;  // [B + 1]
  const int32_t* seq_lens = nullptr;         // [B]; nullptr: sequence length = query count
  // [B + 2] workspace: prefix sums of row tiles, then the Hopper kernel's work-item counter.
  int32_t* tile_offsets = nullptr;
  bool one_tile_per_seq = false;  // every sequence fits one row tile: no prefix sums
  // Query rows (query tokens x group) of the sequences this launch takes; a mixed step's other
  // launch takes the rest (paged decode rows go to the decode variant, longer runs to prefill).
  int min_rows = 0;
  int max_rows = 0x7fffffff;

  int num_seqs = 0;
  int num_tokens = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int group = 1;           // query heads per KV head
  float scale_log2 = 0.f;  // softmax scale * log2(e)
  bool causal = true;
  int sliding_window = -1;  // > 0: a query at p sees keys in (p - window, p]
  // [T] or nullptr: query token t sees keys up to max(own position, attend_until[t]) (causal
  // only; bidirectional image spans). The window's lower bound still applies.
  const int32_t* attend_until = nullptr;

  // Split-KV: with num_splits > 1 each split writes normalized partial outputs and log2-sum-exp
  // to these float32 buffers ([splits, T, Hq, D] and [splits, T, Hq]); a combine kernel merges.
  int num_splits = 1;
  float* partial_out = nullptr;
  float* partial_lse = nullptr;
  // Optional: zeroed counters, one per (row tile CTA, KV head), at least split_counter_capacity.
  // When set (and large enough for the grid) the last split of each to finish merges the
  // splits itself and resets its counter, so no combine kernel is launched; launches that share
  // the counters must be stream-ordered.
  uint32_t* split_counters = nullptr;
  int split_counter_capacity = 0;
};

}  // namespace mmcore::kernels
