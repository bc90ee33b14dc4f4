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
}

}  // namespace mmcore
