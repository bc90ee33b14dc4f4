#pragma once
// The runner's only input: one step of work as flat arrays, ready to copy to the device.
// The Python binding exposes each vector as a numpy array (same names) without copying
// per-request objects. Rows of the token arrays are the step's flattened tokens, request after
// request in batch order:
//
//   query_start_loc:  0        3              9   10
//   tokens:          | req A  | req B (chunk) | C |
//
#include <cstdint>
#include <vector>

#include "types.h"

namespace mmcore {

struct SchedulerOutput {
  int64_t step_id = 0;

  // --- per scheduled request (num_reqs rows, batch order) ---
  std::vector<RequestId> req_ids;
  std::vector<int32_t> num_scheduled_tokens;
  std::vector<int32_t> num_computed_tokens;  // tokens already in the KV cache before this step
  std::vector<int32_t> seq_lens;             // num_computed_tokens + num_scheduled_tokens
  std::vector<int32_t> query_start_loc;      // num_reqs + 1 prefix sums of num_scheduled_tokens
  std::vector<int32_t> block_tables;         // num_reqs x max_blocks_per_req, padded with -1
  int32_t max_blocks_per_req = 0;
  // KV cache groups > 0 (hybrid models; empty with one group): the block table of request i in
  // group g is row i * (num_kv_groups - 1) + g - 1 of group_block_tables (-1 entries before a
  // sliding window are released blocks no query of the step reads); group g's slots are row
  // g - 1 of group_slot_mapping.
  int32_t num_kv_groups = 1;
  std::vector<int32_t> group_block_tables;  // num_reqs x (num_kv_groups - 1) x max_blocks_per_req
  std::vector<int64_t> group_slot_mapping;  // (num_kv_groups - 1) x num_tokens

  // --- per token (num_tokens rows) ---
  // input_ids[i] == -1 means "the token sampled for this request by the previous step, not yet
  // known on the host" (overlapped scheduling); prev_sample_index says where to take it from.
  std::vector<TokenId> input_ids;
  std::vector<int64_t> positions;     // num_tokens, or 3 x num_tokens (row-major) for M-RoPE
  int32_t position_dims = 1;          // 1, or 3 for M-RoPE
  std::vector<int64_t> slot_mapping;  // block_id * block_size + offset in block

  // --- sampling: requests whose chunk reaches the end of their known tokens ---
  std::vector<int32_t> logits_indices;  // row in the flattened tokens whose logits are sampled
  std::vector<RequestId> sampling_req_ids;
  // Per request in batch order: index into the previous step's sampled tokens to fill the -1
  // input id with, or -1 when all input ids of the request are known.
  std::vector<int32_t> prev_sample_index;

  // --- encoder work: items to encode this step (before the LM forward) ---
  std::vector<RequestId> encoder_req_ids;
  std::vector<int32_t> encoder_item_indices;  // index into the request's sorted features
  std::vector<int64_t> encoder_handles;       // encoder cache key of the item (one per identifier)

  // --- scatter plan: copy encoder output rows into the step's input embeddings ---
  // inputs_embeds[dst_row : dst_row + len] = encoder_cache[handle][src_offset : src_offset + len]
  std::vector<int64_t> scatter_handles;
  std::vector<int32_t> scatter_src_offsets;
  std::vector<int32_t> scatter_dst_rows;
  std::vector<int32_t> scatter_lens;

  // --- encoder-decoder requests (cross-attention); all empty when the step has none ---
  std::vector<int32_t> cross_seq_lens;      // per request: encoder positions it attends to
  std::vector<int32_t> cross_block_tables;  // num_reqs x max_cross_blocks_per_req, -1 padded
  int32_t max_cross_blocks_per_req = 0;
  // Requests whose cross K/V this step writes from their encoder output (first decoder chunk):
  std::vector<int32_t> cross_fill_rows;     // batch row of the request
  std::vector<int64_t> cross_fill_handles;  // encoder cache handle of its encoder output
  std::vector<int64_t> cross_slot_mapping;  // slot of each of their encoder positions, in order

  // --- bookkeeping the runner acts on ---
  std::vector<int64_t> freed_encoder_handles;  // drop these encoder outputs
  std::vector<RequestId> finished_req_ids;     // finished or aborted since the last step
  std::vector<RequestId> preempted_req_ids;    // back to waiting; will be recomputed

  [[nodiscard]] int32_t num_reqs() const { return static_cast<int32_t>(req_ids.size()); }
  [[nodiscard]] int32_t num_tokens() const { return static_cast<int32_t>(input_ids.size()); }
};

}  // namespace mmcore
