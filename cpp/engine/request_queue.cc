#include "engine/request_queue.h"

#include <algorithm>

namespace mmcore {

void RequestQueue::push_new(Request* request) {
  by_priority_.emplace(Key{{request->priority, request->arrival_order}, request});
}

void RequestQueue::push_front_preempted(Request* request) { preempted_.push_front(request); }

void RequestQueue::remove(Request* request) {
  auto it = std::find(preempted_.begin(), preempted_.end(), request);
  if (it != preempted_.end()) {
    preempted_.erase(it);
    return;
  }
  by_priority_.erase(Key{{request->priority, request->arrival_order}, request});
}

}  // namespace mmcore
