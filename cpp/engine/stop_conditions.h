#pragma once
// Whether a request is done after its latest token.
#include <optional>

#include "engine/request.h"

namespace mmcore {

// kFinishedStopped on eos (unless ignore_eos) or a stop token, both only after min_tokens;
// kFinishedLength at max_tokens generated or max_model_len tokens; nullopt otherwise.
[[nodiscard]] std::optional<RequestStatus> check_stop(const Request& request,
                                                      int32_t max_model_len);

// "stop", "length" or "abort".
[[nodiscard]] const char* finish_reason_name(RequestStatus status);

}  // namespace mmcore
