#pragma once
// Whether a request is done after its latest token.
#include <algorithm>
#include <optional>

#include "request.h"

namespace mmcore {

// kFinishedStopped on eos (unless ignore_eos) or a stop token, both only after min_tokens;
// kFinishedLength at max_tokens generated or max_model_len tokens; nullopt otherwise.
// Inline: it runs for every sampled token.
[[nodiscard]] inline std::optional<RequestStatus> check_stop(const Request& request,
                                                             int32_t max_model_len) {
  const int32_t num_output = request.num_output_tokens();
  const SamplingLimits& limits = request.sampling;
  if (num_output > 0 && num_output >= limits.min_tokens) {
    const TokenId last = request.token_ids.back();
    if (!limits.ignore_eos && std::find(limits.eos_token_ids.begin(), limits.eos_token_ids.end(),
                                        last) != limits.eos_token_ids.end()) {
      return RequestStatus::kFinishedStopped;
    }
    if (std::find(limits.stop_token_ids.begin(), limits.stop_token_ids.end(), last) !=
        limits.stop_token_ids.end()) {
      return RequestStatus::kFinishedStopped;
    }
  }
  if (num_output >= limits.max_tokens || request.num_tokens() >= max_model_len) {
    return RequestStatus::kFinishedLength;
  }
  return std::nullopt;
}

// "stop", "length" or "abort".
[[nodiscard]] const char* finish_reason_name(RequestStatus status);

}  // namespace mmcore
