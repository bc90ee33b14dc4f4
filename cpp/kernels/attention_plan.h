// Host-side planning of the attention launches (no CUDA here, so the C++ tests run it on any
// machine): which kernel variant takes which sequences of a paged step and how many KV splits
// (flash-decoding) each launch uses.
#pragma once

namespace mmcore::kernels {

// Query rows (query tokens x GQA group) a decode-variant CTA holds: sequences with at most this
// many rows run through the decode variant.
inline constexpr int kPagedDecodeRows = 16;
// Keys per K/V tile of every variant.
inline constexpr int kAttentionKeysPerTile = 64;
// Most KV splits of one launch.
inline constexpr int kAttentionMaxSplits = 64;

// The variants compiled per (dtype, head dim).
enum class AttentionVariant : int {
  kPagedDecode = 0,   // 16 rows per CTA, 4 warps over key slices (decodes, short GQA groups)
  kPagedPrefill = 1,  // 128 rows per CTA, 4 warps of 32 rows (prefill chunks, mixed batches)
  kPacked = 2,        // packed [T, H, D] K/V, 128 rows per CTA (ViT, non-causal)
};

// Rows (query token x head-in-group) per CTA of a variant.
[[nodiscard]] int attention_block_rows(AttentionVariant variant, int head_dim);

// How many KV splits (flash-decoding) fill `num_sms` multiprocessors, each with at least
// `min_tiles_per_split` tiles of 64 keys; 1 = no split.
[[nodiscard]] int attention_num_splits(AttentionVariant variant, int head_dim, int num_seqs,
                                       int num_tokens, int num_kv_heads, int group, int max_seq_len,
                                       int num_sms, int min_tiles_per_split);

// How a paged step launches, decided on the host from its query-run bounds: sequences of at most
// 16 query rows (decodes, short GQA runs) go to the decode variant, longer ones to the prefill
// variant; a mixed step launches both, one after the other. A variant's KV split count, or 0
// where the step has none of its sequences.
struct PagedLaunchPlan {
  int decode_splits = 0;
  int prefill_splits = 0;
};

// The plan for a step whose query runs per sequence lie in [min_query_len, max_query_len] (an
// understated max gives wrong results; an understated min only an empty decode launch).
[[nodiscard]] PagedLaunchPlan plan_paged_attention(int head_dim, int num_seqs, int num_tokens,
                                                   int num_kv_heads, int group, int min_query_len,
                                                   int max_query_len, int max_seq_len, int num_sms,
                                                   int min_tiles_per_split = 1);

}  // namespace mmcore::kernels
