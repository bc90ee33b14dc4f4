#pragma once
// The KV block manager for a server with its own scheduler: it keeps the requests it serves
// (known tokens, multimodal items, cache salt, computed tokens), keyed by id, and counts
// computed tokens itself. The Scheduler owns its own BlockManager and does not use this class.
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "block_manager.h"
#include "request.h"

namespace mmcore {

class StandaloneBlockManager {
 public:
  // Throws std::invalid_argument on a bad size (num_blocks or block_size < 1).
  explicit StandaloneBlockManager(const BlockManagerConfig& config);

  // Registers a request. `features` need identifier, offset and length (sorted, non-overlapping,
  // inside the tokens); num_embeds is not used. Throws std::invalid_argument on a live id, empty
  // or negative tokens, or bad items.
  void add_request(RequestId id, std::vector<TokenId> token_ids, std::vector<MMFeature> features,
                   std::string cache_salt);
  // Appends known tokens (e.g. generated ones).
  void append_tokens(RequestId id, const TokenId* token_ids, int32_t num_tokens);
  // Block ids of the longest cached prefix (never the last token); empty when the request holds
  // blocks.
  [[nodiscard]] std::vector<BlockId> get_computed_blocks(RequestId id);
  [[nodiscard]] bool can_allocate(RequestId id, int32_t num_new_tokens, bool use_prefix_cache);
  // Takes the prefix hit (first allocation only) plus num_new_tokens slots, marks them computed
  // and caches full blocks. Returns the hit length in tokens, or std::nullopt when the blocks do
  // not fit (nothing changes). Throws std::invalid_argument if the slots would pass the known
  // tokens.
  [[nodiscard]] std::optional<int32_t> allocate(RequestId id, int32_t num_new_tokens,
                                                bool use_prefix_cache);
  // Releases the request's blocks; it keeps its tokens and may allocate again.
  void free(RequestId id);
  void remove_request(RequestId id);

  [[nodiscard]] const std::vector<BlockId>& block_table(RequestId id) const {
    return manager_.block_table(get(id));
  }
  [[nodiscard]] int32_t num_computed_tokens(RequestId id) const {
    return get(id).num_computed_tokens;
  }
  [[nodiscard]] bool contains(RequestId id) const { return requests_.count(id) != 0; }
  [[nodiscard]] const BlockManager& manager() const { return manager_; }
  [[nodiscard]] BlockManagerStats stats() const { return manager_.stats(); }
  // Throws std::logic_error naming the first broken invariant.
  void check_invariants() const { manager_.check_invariants(); }

 private:
  // Throws std::out_of_range naming an unknown id.
  [[nodiscard]] Request& get(RequestId id);
  [[nodiscard]] const Request& get(RequestId id) const;

  BlockManager manager_;
  std::unordered_map<RequestId, Request> requests_;
};

}  // namespace mmcore
