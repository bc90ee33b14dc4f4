#include "engine/standalone_block_manager.h"

#include <stdexcept>
#include <utility>

namespace mmcore {

namespace {

const BlockManagerConfig& checked(const BlockManagerConfig& config) {
  if (config.num_blocks < 1) throw std::invalid_argument("num_blocks must be >= 1");
  if (config.block_size < 1) throw std::invalid_argument("block_size must be >= 1");
  return config;
}

void check_tokens(const TokenId* token_ids, int32_t num_tokens) {
  for (int32_t i = 0; i < num_tokens; ++i) {
    if (token_ids[i] < 0) {
      throw std::invalid_argument("token id " + std::to_string(token_ids[i]) + " is negative");
    }
  }
}

}  // namespace

StandaloneBlockManager::StandaloneBlockManager(const BlockManagerConfig& config)
    : manager_(checked(config)) {}

void StandaloneBlockManager::add_request(RequestId id, std::vector<TokenId> token_ids,
                                         std::vector<MMFeature> features, std::string cache_salt) {
  if (requests_.count(id) != 0) {
    throw std::invalid_argument("request " + std::to_string(id) + " already exists");
  }
  if (token_ids.empty()) throw std::invalid_argument("token_ids must not be empty");
  check_tokens(token_ids.data(), static_cast<int32_t>(token_ids.size()));
  const auto num_tokens = static_cast<int32_t>(token_ids.size());
  int32_t prev_end = 0;
  for (MMFeature& f : features) {
    if (f.identifier.empty()) throw std::invalid_argument("an item has an empty identifier");
    if (f.offset < prev_end || f.length <= 0 || f.offset > num_tokens - f.length) {
      throw std::invalid_argument("item '" + f.identifier +
                                  "' must be sorted, non-overlapping and inside the tokens");
    }
    f.num_embeds = f.length;
    f.embed_mask.clear();  // the block hash uses identifier, offset and length only
    prev_end = f.offset + f.length;
  }
  Request r;
  r.id = id;
  r.token_ids = std::move(token_ids);
  r.num_prompt_tokens = num_tokens;
  r.features = std::move(features);
  r.cache_salt = std::move(cache_salt);
  requests_.emplace(id, std::move(r));
}

void StandaloneBlockManager::append_tokens(RequestId id, const TokenId* token_ids,
                                           int32_t num_tokens) {
  if (num_tokens < 0) throw std::invalid_argument("num_tokens must be >= 0");
  check_tokens(token_ids, num_tokens);
  Request& r = get(id);
  r.token_ids.insert(r.token_ids.end(), token_ids, token_ids + num_tokens);
}

std::vector<BlockId> StandaloneBlockManager::get_computed_blocks(RequestId id) {
  return manager_.get_computed_blocks(get(id)).blocks;
}

bool StandaloneBlockManager::can_allocate(RequestId id, int32_t num_new_tokens,
                                          bool use_prefix_cache) {
  if (num_new_tokens < 0) throw std::invalid_argument("num_new_tokens must be >= 0");
  Request& r = get(id);
  const ComputedBlocks hit = use_prefix_cache ? manager_.get_computed_blocks(r) : ComputedBlocks{};
  return manager_.can_allocate(r, num_new_tokens, hit);
}

std::optional<int32_t> StandaloneBlockManager::allocate(RequestId id, int32_t num_new_tokens,
                                                        bool use_prefix_cache) {
  if (num_new_tokens < 0) throw std::invalid_argument("num_new_tokens must be >= 0");
  Request& r = get(id);
  const ComputedBlocks hit = use_prefix_cache ? manager_.get_computed_blocks(r) : ComputedBlocks{};
  if (static_cast<int64_t>(r.num_computed_tokens) + hit.num_tokens + num_new_tokens >
      r.num_tokens()) {
    throw std::invalid_argument("request " + std::to_string(id) + " has " +
                                std::to_string(r.num_tokens()) + " known tokens; " +
                                std::to_string(r.num_computed_tokens + hit.num_tokens) +
                                " are computed, so " + std::to_string(num_new_tokens) +
                                " more slots would pass its tokens");
  }
  if (!manager_.allocate_slots(r, num_new_tokens, hit)) return std::nullopt;
  r.num_computed_tokens += hit.num_tokens + num_new_tokens;
  manager_.cache_full_blocks(r, r.num_computed_tokens);
  return hit.num_tokens;
}

void StandaloneBlockManager::free(RequestId id) {
  Request& r = get(id);
  manager_.free(r);
  r.num_computed_tokens = 0;
}

void StandaloneBlockManager::remove_request(RequestId id) {
  free(id);
  requests_.erase(id);
}

Request& StandaloneBlockManager::get(RequestId id) {
  return const_cast<Request&>(std::as_const(*this).get(id));
}

const Request& StandaloneBlockManager::get(RequestId id) const {
  auto it = requests_.find(id);
  if (it == requests_.end()) throw std::out_of_range("unknown request " + std::to_string(id));
  return it->second;
}

}  // namespace mmcore
