// Launchers of the attention kernels: validate the arguments (std::invalid_argument naming the
// problem), pick the kernel variant for the head dim, dtype and batch shape, and launch on the
// given stream. Pointers in AttentionParams are device pointers; nothing here allocates.
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

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

// Paged causal attention; p.tile_offsets needs num_seqs + 1 int32s; split buffers as documented
// in AttentionParams when a launch of the plan splits (sized for the larger count; the two
// launches reuse them in stream order). p.num_splits is taken from the plan. kv_dtype: the
// caches' dtype, `dtype` (the query's) or kFloat8E4M3 (then p.k_scale / p.v_scale are
// required). Throws std::invalid_argument on bad arguments and std::runtime_error on a CUDA
// error.
void launch_paged_attention(AttentionParams p, DType dtype, DType kv_dtype, int head_dim,
                            PagedLaunchPlan plan, cudaStream_t stream);

// Packed varlen attention (cu_seqlens in p.query_start_loc, seq_lens null); causal as in p.
void launch_varlen_attention(AttentionParams p, DType dtype, int head_dim, cudaStream_t stream);

// Per-variant entry points, one translation unit per head dim (attention_d*.cu).
template <int kHeadDim>
[[nodiscard]] cudaError_t run_attention(const AttentionParams& p, DType dtype,
                                        AttentionVariant variant, cudaStream_t stream);

}  // namespace mmcore::kernels
