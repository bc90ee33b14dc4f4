#include "engine/scheduler_config.h"

#include <stdexcept>
#include <string>

namespace mmcore {

namespace {

void require_positive(int64_t value, const char* name) {
  if (value <= 0) {
    throw std::invalid_argument(std::string("SchedulerConfig.") + name + " must be positive, got " +
                                std::to_string(value));
  }
}

}  // namespace

void validate_config(const SchedulerConfig& config) {
  require_positive(config.num_blocks, "num_blocks");
  require_positive(config.block_size, "block_size");
  require_positive(config.max_num_batched_tokens, "max_num_batched_tokens");
  require_positive(config.max_num_seqs, "max_num_seqs");
  require_positive(config.max_model_len, "max_model_len");
  if (config.encoder_budget < 0 || config.encoder_cache_size < 0) {
    throw std::invalid_argument(
        "SchedulerConfig.encoder_budget and encoder_cache_size must be >= 0");
  }
  // KV cache groups: -1 (full attention) or a positive window each, the full groups first.
  bool sliding_seen = false;
  for (const int32_t window : config.kv_group_windows) {
    if (window != -1 && window <= 0) {
      throw std::invalid_argument(
          "SchedulerConfig.kv_group_windows: each entry is -1 (full) or a "
          "positive window, got " +
          std::to_string(window));
    }
    if (window == -1 && sliding_seen) {
      throw std::invalid_argument(
          "SchedulerConfig.kv_group_windows: full-attention groups come before sliding ones");
    }
    sliding_seen = sliding_seen || window > 0;
  }
}

}  // namespace mmcore
