#include "engine/stop_conditions.h"

namespace mmcore {

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
