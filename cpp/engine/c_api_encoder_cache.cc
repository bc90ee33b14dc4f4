// C API: the encoder cache.
#include <string>
#include <vector>

#include "engine/c_api_internal.h"
#include "engine/encoder_cache.h"

struct mmcore_encoder_cache {
  explicit mmcore_encoder_cache(int64_t capacity) : cache(capacity) {}
  mmcore::EncoderCacheManager cache;
  std::vector<int64_t> freed;  // what the last take_freed points into
};

namespace {

using mmcore::capi::Error;
using mmcore::capi::guarded;
using mmcore::capi::HandleKind;
using mmcore::capi::require_pointer;
using mmcore::capi::to_string_arg;

constexpr const char* kTypeName = "mmcore_encoder_cache";

mmcore_encoder_cache& checked(const mmcore_encoder_cache* c) {
  mmcore::capi::check_handle(c, HandleKind::kEncoderCache, kTypeName);
  return *const_cast<mmcore_encoder_cache*>(c);
}

Error not_cached(const std::string& identifier) {
  return Error(MMCORE_ERROR_NOT_FOUND, "item '" + identifier + "' is not in the encoder cache");
}

}  // namespace

extern "C" {

mmcore_status mmcore_encoder_cache_create(int64_t capacity_embeds, mmcore_encoder_cache** out) {
  return guarded([&] {
    require_pointer(out, "out");
    *out = nullptr;
    auto* c = new mmcore_encoder_cache(capacity_embeds);
    mmcore::capi::register_handle(c, HandleKind::kEncoderCache);
    *out = c;
  });
}

mmcore_status mmcore_encoder_cache_destroy(mmcore_encoder_cache* cache) {
  if (cache == nullptr) return MMCORE_OK;
  return guarded([&] {
    mmcore::capi::unregister_handle(cache, HandleKind::kEncoderCache, kTypeName);
    delete cache;
  });
}

mmcore_status mmcore_encoder_cache_lookup(mmcore_encoder_cache* cache, const char* identifier,
                                          int32_t* hit) {
  return guarded([&] {
    mmcore_encoder_cache& c = checked(cache);
    const std::string id = to_string_arg(identifier, "identifier");
    require_pointer(hit, "hit");
    *hit = c.cache.lookup(id) ? 1 : 0;
  });
}

mmcore_status mmcore_encoder_cache_get_handle(const mmcore_encoder_cache* cache,
                                              const char* identifier, int64_t* handle) {
  return guarded([&] {
    const mmcore_encoder_cache& c = checked(cache);
    const std::string id = to_string_arg(identifier, "identifier");
    require_pointer(handle, "handle");
    const auto h = c.cache.handle(id);
    if (!h) throw not_cached(id);
    *handle = *h;
  });
}

mmcore_status mmcore_encoder_cache_num_refs(const mmcore_encoder_cache* cache,
                                            const char* identifier, int32_t* out) {
  return guarded([&] {
    const mmcore_encoder_cache& c = checked(cache);
    const std::string id = to_string_arg(identifier, "identifier");
    require_pointer(out, "out");
    *out = c.cache.num_refs(id);
  });
}

mmcore_status mmcore_encoder_cache_can_allocate(const mmcore_encoder_cache* cache,
                                                int32_t num_embeds, int32_t* out) {
  return guarded([&] {
    const mmcore_encoder_cache& c = checked(cache);
    require_pointer(out, "out");
    *out = c.cache.can_allocate(num_embeds) ? 1 : 0;
  });
}

mmcore_status mmcore_encoder_cache_allocate(mmcore_encoder_cache* cache, const char* identifier,
                                            int32_t num_embeds, int64_t request_id,
                                            int64_t* handle) {
  return guarded([&] {
    mmcore_encoder_cache& c = checked(cache);
    const std::string id = to_string_arg(identifier, "identifier");
    require_pointer(handle, "handle");
    *handle = c.cache.allocate(id, num_embeds, request_id);
  });
}

mmcore_status mmcore_encoder_cache_acquire(mmcore_encoder_cache* cache, const char* identifier,
                                           int64_t request_id, int64_t* handle) {
  return guarded([&] {
    mmcore_encoder_cache& c = checked(cache);
    const std::string id = to_string_arg(identifier, "identifier");
    require_pointer(handle, "handle");
    if (!c.cache.contains(id)) throw not_cached(id);
    *handle = c.cache.acquire(id, request_id);
  });
}

mmcore_status mmcore_encoder_cache_release(mmcore_encoder_cache* cache, const char* identifier,
                                           int64_t request_id) {
  return guarded([&] {
    mmcore_encoder_cache& c = checked(cache);
    c.cache.release(to_string_arg(identifier, "identifier"), request_id);
  });
}

mmcore_status mmcore_encoder_cache_release_all(mmcore_encoder_cache* cache, int64_t request_id) {
  return guarded([&] { checked(cache).cache.release_all(request_id); });
}

mmcore_status mmcore_encoder_cache_take_freed(mmcore_encoder_cache* cache, const int64_t** handles,
                                              int32_t* num_handles) {
  return guarded([&] {
    mmcore_encoder_cache& c = checked(cache);
    require_pointer(handles, "handles");
    require_pointer(num_handles, "num_handles");
    c.freed = c.cache.take_freed();
    *handles = c.freed.data();
    *num_handles = static_cast<int32_t>(c.freed.size());
  });
}

mmcore_status mmcore_encoder_cache_get_stats(const mmcore_encoder_cache* cache,
                                             mmcore_encoder_cache_stats* out) {
  return guarded([&] {
    const mmcore_encoder_cache& c = checked(cache);
    require_pointer(out, "out");
    const mmcore::EncoderCacheStats s = c.cache.stats();
    out->num_queries = s.num_queries;
    out->num_hits = s.num_hits;
    out->used_embeds = s.used_embeds;
    out->capacity_embeds = s.capacity_embeds;
    out->num_entries = s.num_entries;
    out->num_referenced_entries = s.num_referenced_entries;
  });
}

mmcore_status mmcore_encoder_cache_check_invariants(const mmcore_encoder_cache* cache) {
  return guarded([&] {
    const mmcore_encoder_cache& c = checked(cache);
    mmcore::capi::invariants_as_internal([&] { c.cache.check_invariants(); });
  });
}

}  // extern "C"
