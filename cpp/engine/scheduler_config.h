#pragma once
// Static limits of one scheduler: KV cache size, per-step budgets, encoder cache size.
#include <cstdint>
#include <vector>

namespace mmcore {

struct SchedulerConfig {
  int32_t num_blocks = 0;  // KV cache blocks (required)
  int32_t block_size = 16;
  int32_t max_num_batched_tokens = 8192;  // tokens per step
  int32_t max_num_seqs = 256;             // running requests at most
  int32_t max_model_len = 4096;           // prompt + generated tokens
  bool enable_prefix_caching = true;
  // false: a prompt is scheduled whole or not at all (a preempted request whose prompt plus
  // output exceeds max_num_batched_tokens is still recomputed in chunks).
  bool enable_chunked_prefill = true;
  // false: a prefill chunk (first run or recompute after preemption) never ends inside a
  // multimodal item, so every item's tokens are computed in one step (models whose item tokens
  // attend to each other both ways, e.g. Gemma 3); each item must fit max_num_batched_tokens.
  bool chunk_inside_mm_items = true;
  int32_t encoder_budget = 8192;      // encoder embeddings computed per step at most
  int64_t encoder_cache_size = 8192;  // embeddings held in the encoder cache at most
  // KV cache groups (BlockManagerConfig::group_windows): empty for one full-attention group;
  // hybrid models list -1 (full) or the sliding window per group, full group first.
  std::vector<int32_t> kv_group_windows;
};

// Throws std::invalid_argument naming the first bad field.
void validate_config(const SchedulerConfig& config);

}  // namespace mmcore
