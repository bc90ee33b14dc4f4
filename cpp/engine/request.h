#pragma once
// What the core knows of one request: its tokens (prompt + output), its multimodal items,
// sampling limits and scheduling state. Owned by the scheduler; the block manager reads it.
#include <cstdint>
#include <string>
#include <vector>

#include "block_hash.h"
#include "types.h"

namespace mmcore {

enum class RequestStatus : uint8_t {
  kWaiting,
  kRunning,
  kPreempted,  // waiting again, will be recomputed from its prefix-cache hit on
  kFinishedStopped,
  kFinishedLength,
  kFinishedAborted,
};

[[nodiscard]] inline bool is_finished(RequestStatus status) {
  return status == RequestStatus::kFinishedStopped || status == RequestStatus::kFinishedLength ||
         status == RequestStatus::kFinishedAborted;
}

struct SamplingLimits {
  int32_t max_tokens = 16;  // generated tokens at most
  int32_t min_tokens = 0;   // eos / stop tokens are ignored before this many generated tokens
  std::vector<TokenId> eos_token_ids;
  std::vector<TokenId> stop_token_ids;
  bool ignore_eos = false;
};

struct Request {
  // Hot per-step state first: the fields every step reads for each running request share the
  // first cache lines (field order only; nothing depends on it).
  RequestId id = 0;
  RequestStatus status = RequestStatus::kWaiting;
  int32_t num_prompt_tokens = 0;
  // Tokens whose KV is computed (or scheduled to be, optimistically, in the step in flight).
  int32_t num_computed_tokens = 0;
  // Sampled tokens of the step in flight that are not appended yet (overlapped scheduling).
  int32_t num_pending_tokens = 0;
  // Owned by the block manager: index of this request's block table (-1: holds no blocks) and
  // mirrors of its size and cached prefix, so the hot path need not touch the table.
  int32_t kv_table = -1;
  int32_t kv_num_blocks = 0;
  int32_t kv_num_cached_blocks = 0;
  // Index of this request in the previous step's sampling_req_ids (for overlapped scheduling).
  int32_t last_sample_index = -1;
  std::vector<TokenId> token_ids;  // prompt followed by the generated tokens
  SamplingLimits sampling;         // read by every step's stop check (second cache line)
  // Third cache line, the last one a decode step reads (schedule and update).
  // Scheduler bookkeeping set at admission: the end of the last feature's range (0 without
  // features), so a decode step knows it is past every item without reading `features`.
  int32_t items_end = 0;
  int32_t num_done_items = 0;       // leading features whose range is fully computed
  int32_t cross_num_blocks = 0;     // mirror of the block manager's cross table size
  bool encoder_input_held = false;  // holds an encoder-cache reference to encoder_input
  std::vector<MMFeature> features;  // sorted by offset, non-overlapping, inside the prompt
  // M-RoPE: 3 x num_prompt_tokens positions (row-major); generated token i sits at
  // i + mrope_delta in all three rows. Empty for 1-D RoPE models.
  std::vector<int64_t> mrope_positions;
  // Encoder-decoder models (Whisper): the encoder input the decoder cross-attends to. Its
  // num_embeds is the number of encoder positions, i.e. the cross-attention K/V slots the block
  // manager holds for the request (offset / length unused); 0 for a decoder-only request.
  MMFeature encoder_input;

  // --- colder state ---
  std::string cache_salt;     // separates prefix-cache namespaces (first block's hash)
  int32_t priority = 0;       // lower runs first among waiting requests
  int64_t arrival_order = 0;  // unique, increasing with add order
  int64_t mrope_delta = 0;

  // Chained hash of every full block of known tokens (filled lazily by extend_block_hashes).
  std::vector<BlockHash> block_hashes;

  // --- scheduler bookkeeping of the multimodal items (one entry per feature) ---
  std::vector<uint8_t> item_held;     // this request holds an encoder-cache reference for it
  std::vector<int64_t> item_handles;  // encoder-cache handle while held
  int64_t encoder_input_handle = -1;  // encoder_input's handle while held

  [[nodiscard]] int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  [[nodiscard]] int32_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  [[nodiscard]] bool has_mrope() const { return !mrope_positions.empty(); }
  [[nodiscard]] bool is_encoder_decoder() const { return encoder_input.num_embeds > 0; }
};

}  // namespace mmcore
