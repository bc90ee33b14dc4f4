// C API: the standalone KV block manager.
#include <string>
#include <vector>

#include "engine/c_api_internal.h"
#include "engine/standalone_block_manager.h"

struct mmcore_block_manager {
  explicit mmcore_block_manager(const mmcore::BlockManagerConfig& config) : manager(config) {}
  mmcore::StandaloneBlockManager manager;
  std::vector<int32_t> blocks;  // what the last get_computed_blocks / block_table points into
};

namespace {

using mmcore::capi::guarded;
using mmcore::capi::HandleKind;
using mmcore::capi::require_array;
using mmcore::capi::require_pointer;

constexpr const char* kTypeName = "mmcore_block_manager";

mmcore_block_manager& checked(const mmcore_block_manager* m) {
  mmcore::capi::check_handle(m, HandleKind::kBlockManager, kTypeName);
  return *const_cast<mmcore_block_manager*>(m);
}

void hand_out(mmcore_block_manager& m, const std::vector<int32_t>& blocks,
              const int32_t** block_ids, int32_t* num_blocks) {
  m.blocks = blocks;
  *block_ids = m.blocks.data();
  *num_blocks = static_cast<int32_t>(m.blocks.size());
}

}  // namespace

extern "C" {

mmcore_status mmcore_block_manager_create(int32_t num_blocks, int32_t block_size,
                                          int32_t enable_prefix_caching,
                                          mmcore_block_manager** out) {
  return guarded([&] {
    require_pointer(out, "out");
    *out = nullptr;
    auto* m = new mmcore_block_manager(
        mmcore::BlockManagerConfig{num_blocks, block_size, enable_prefix_caching != 0, {}});
    mmcore::capi::register_handle(m, HandleKind::kBlockManager);
    *out = m;
  });
}

mmcore_status mmcore_block_manager_destroy(mmcore_block_manager* manager) {
  if (manager == nullptr) return MMCORE_OK;
  return guarded([&] {
    mmcore::capi::unregister_handle(manager, HandleKind::kBlockManager, kTypeName);
    delete manager;
  });
}

mmcore_status mmcore_block_manager_add_request(mmcore_block_manager* manager, int64_t request_id,
                                               const int32_t* token_ids, int32_t num_tokens,
                                               const mmcore_mm_feature* features,
                                               int32_t num_features, const char* cache_salt) {
  return guarded([&] {
    mmcore_block_manager& m = checked(manager);
    require_array(token_ids, num_tokens, "token_ids");
    std::vector<int32_t> tokens(token_ids, token_ids + num_tokens);
    m.manager.add_request(request_id, std::move(tokens),
                          mmcore::capi::to_features(features, num_features),
                          cache_salt == nullptr ? std::string() : std::string(cache_salt));
  });
}

mmcore_status mmcore_block_manager_append_tokens(mmcore_block_manager* manager, int64_t request_id,
                                                 const int32_t* token_ids, int32_t num_tokens) {
  return guarded([&] {
    mmcore_block_manager& m = checked(manager);
    require_array(token_ids, num_tokens, "token_ids");
    m.manager.append_tokens(request_id, token_ids, num_tokens);
  });
}

mmcore_status mmcore_block_manager_get_computed_blocks(mmcore_block_manager* manager,
                                                       int64_t request_id,
                                                       const int32_t** block_ids,
                                                       int32_t* num_blocks) {
  return guarded([&] {
    mmcore_block_manager& m = checked(manager);
    require_pointer(block_ids, "block_ids");
    require_pointer(num_blocks, "num_blocks");
    hand_out(m, m.manager.get_computed_blocks(request_id), block_ids, num_blocks);
  });
}

mmcore_status mmcore_block_manager_can_allocate(mmcore_block_manager* manager, int64_t request_id,
                                                int32_t num_new_tokens, int32_t use_prefix_cache,
                                                int32_t* out) {
  return guarded([&] {
    mmcore_block_manager& m = checked(manager);
    require_pointer(out, "out");
    *out = m.manager.can_allocate(request_id, num_new_tokens, use_prefix_cache != 0) ? 1 : 0;
  });
}

mmcore_status mmcore_block_manager_allocate(mmcore_block_manager* manager, int64_t request_id,
                                            int32_t num_new_tokens, int32_t use_prefix_cache,
                                            int32_t* allocated, int32_t* num_hit_tokens) {
  return guarded([&] {
    mmcore_block_manager& m = checked(manager);
    require_pointer(allocated, "allocated");
    require_pointer(num_hit_tokens, "num_hit_tokens");
    const auto hit = m.manager.allocate(request_id, num_new_tokens, use_prefix_cache != 0);
    *allocated = hit ? 1 : 0;
    *num_hit_tokens = hit.value_or(0);
  });
}

mmcore_status mmcore_block_manager_free(mmcore_block_manager* manager, int64_t request_id) {
  return guarded([&] { checked(manager).manager.free(request_id); });
}

mmcore_status mmcore_block_manager_remove_request(mmcore_block_manager* manager,
                                                  int64_t request_id) {
  return guarded([&] { checked(manager).manager.remove_request(request_id); });
}

mmcore_status mmcore_block_manager_block_table(mmcore_block_manager* manager, int64_t request_id,
                                               const int32_t** block_ids, int32_t* num_blocks) {
  return guarded([&] {
    mmcore_block_manager& m = checked(manager);
    require_pointer(block_ids, "block_ids");
    require_pointer(num_blocks, "num_blocks");
    hand_out(m, m.manager.block_table(request_id), block_ids, num_blocks);
  });
}

mmcore_status mmcore_block_manager_num_computed_tokens(const mmcore_block_manager* manager,
                                                       int64_t request_id, int32_t* out) {
  return guarded([&] {
    const mmcore_block_manager& m = checked(manager);
    require_pointer(out, "out");
    *out = m.manager.num_computed_tokens(request_id);
  });
}

mmcore_status mmcore_block_manager_get_stats(const mmcore_block_manager* manager,
                                             mmcore_block_manager_stats* out) {
  return guarded([&] {
    const mmcore_block_manager& m = checked(manager);
    require_pointer(out, "out");
    const mmcore::BlockManagerStats s = m.manager.stats();
    out->num_blocks = s.num_blocks;
    out->num_used_blocks = s.num_used_blocks;
    out->num_free_blocks = s.num_free_blocks;
    out->num_cached_blocks = s.num_cached_blocks;
    out->prefix_queries = s.prefix_queries;
    out->prefix_hits = s.prefix_hits;
  });
}

mmcore_status mmcore_block_manager_check_invariants(const mmcore_block_manager* manager) {
  return guarded([&] {
    const mmcore_block_manager& m = checked(manager);
    mmcore::capi::invariants_as_internal([&] { m.manager.check_invariants(); });
  });
}

}  // extern "C"
