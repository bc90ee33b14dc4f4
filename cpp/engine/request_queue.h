#pragma once
// The waiting requests in scheduling order: preempted requests first (most recently preempted
// first), then new ones by (priority, arrival order).
#include <cstdint>
#include <deque>
#include <set>
#include <utility>

#include "request.h"

namespace mmcore {

class RequestQueue {
 public:
  void push_new(Request* request);
  void push_front_preempted(Request* request);
  void remove(Request* request);
  [[nodiscard]] int32_t size() const {
    return static_cast<int32_t>(preempted_.size() + by_priority_.size());
  }
  [[nodiscard]] bool empty() const { return size() == 0; }

  // Visits requests in order; `visit(request)` returns kTake (remove it), kSkip or kStop.
  enum class Visit { kTake, kSkip, kStop };
  template <typename Fn>
  void for_each(Fn&& visit) {
    for (auto it = preempted_.begin(); it != preempted_.end();) {
      const Visit v = visit(*it);
      if (v == Visit::kStop) return;
      it = v == Visit::kTake ? preempted_.erase(it) : std::next(it);
    }
    for (auto it = by_priority_.begin(); it != by_priority_.end();) {
      const Visit v = visit(it->second);
      if (v == Visit::kStop) return;
      it = v == Visit::kTake ? by_priority_.erase(it) : std::next(it);
    }
  }

 private:
  using Key = std::pair<std::pair<int32_t, int64_t>, Request*>;
  struct KeyLess {
    bool operator()(const Key& a, const Key& b) const { return a.first < b.first; }
  };
  std::deque<Request*> preempted_;
  std::set<Key, KeyLess> by_priority_;
};

}  // namespace mmcore
