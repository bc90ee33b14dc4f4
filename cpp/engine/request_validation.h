#pragma once
// Checks at add time that a request can ever run under a scheduler's limits.
#include "request.h"
#include "scheduler_config.h"

namespace mmcore {

// Throws std::invalid_argument naming the problem: empty or too long prompt, a prompt + output
// that can never fit the KV cache, bad sampling limits, malformed / unsorted / overlapping
// features, an item larger than the encoder budget or cache, bad M-RoPE positions.
void validate_request(const Request& request, const SchedulerConfig& config);

// Sizes the per-item scheduler bookkeeping.
void prepare_request_items(Request& request);

}  // namespace mmcore
