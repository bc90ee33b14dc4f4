#pragma once
// Software prefetch for the scheduler's per-request loops (internal, not installed): a step
// touches a few cache lines of each of N heap-allocated requests, so it asks for them a few
// requests ahead and overlaps the misses instead of waiting for each in turn.
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "request.h"

namespace mmcore {

// Prefetch distances (in requests) of the per-request loops: the Request's hot lines first, then
// what they point at (tokens, block table), so a step overlaps the cache misses of requests.
inline constexpr size_t kPrefetchRequest = 16;
inline constexpr size_t kPrefetchPointees = 8;
inline constexpr size_t kPrefetchBlock = 4;

inline void prefetch_request(const Request* r) {
  const char* p = reinterpret_cast<const char*>(r);
  __builtin_prefetch(p);
  __builtin_prefetch(p + 64);
  __builtin_prefetch(p + 128);
}

// The token a decode step reads (its input id) or an update writes next to (the new sample).
inline void prefetch_token(const Request& r, int32_t index) {
  const int32_t last = r.num_tokens() - 1;
  if (last >= 0) __builtin_prefetch(r.token_ids.data() + std::min(index, last));
}

}  // namespace mmcore
