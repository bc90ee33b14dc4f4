#include "engine/stop_conditions.h"

#include <algorithm>

namespace mmcore {

namespace {

bool contains(const std::vector<TokenId>& ids, TokenId token) {
  return std::find(ids.begin(), ids.end(), token) != ids.end();
}

}  // namespace

std::optional<RequestStatus> check_stop(const Request& request, int32_t max_model_len) {
  const int32_t num_output = request.num_output_tokens();
  const SamplingLimits& limits = request.sampling;
  if (num_output > 0 && num_output >= limits.min_tokens) {
    const TokenId last = request.token_ids.back();
    if (!limits.ignore_eos && contains(limits.eos_token_ids, last)) {
      return RequestStatus::kFinishedStopped;
    }
    if (contains(limits.stop_token_ids, last)) return RequestStatus::kFinishedStopped;
  }
  if (num_output >= limits.max_tokens || request.num_tokens() >= max_model_len) {
    return RequestStatus::kFinishedLength;
  }
  return std::nullopt;
}

const char* finish_reason_name(RequestStatus status) {
  switch (status) {
    case RequestStatus::kFinishedStopped:
      return "stop";
    case RequestStatus::kFinishedLength:
      return "length";
    case RequestStatus::kFinishedAborted:
      return "abort";
    default:
      return "unfinished";
  }
}

}  // namespace mmcore
