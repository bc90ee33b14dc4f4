#include "engine/block_hash.h"

#include <algorithm>

#include "engine/request.h"

namespace mmcore {

uint64_t hash_string(const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a offset basis
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ULL;  // FNV prime
  }
  return mix64(h ^ text.size());
}

namespace {

// The token part of hash_block: one multiply-xorshift per two tokens, one splitmix64 finaliser
// at the end. Spread is all a block hash needs: the block pool confirms every hit by content.
BlockHash hash_tokens(BlockHash parent, const TokenId* tokens, int32_t num_tokens) {
  constexpr uint64_t kMul = 0x9fb21c651e98df25ULL;
  uint64_t h = hash_combine(parent, static_cast<uint64_t>(num_tokens));
  int32_t i = 0;
  for (; i + 1 < num_tokens; i += 2) {
    const uint64_t word = (static_cast<uint64_t>(static_cast<uint32_t>(tokens[i])) << 32) |
                          static_cast<uint32_t>(tokens[i + 1]);
    h = (h ^ word) * kMul;
    h ^= h >> 29;
  }
  if (i < num_tokens) {
    h = (h ^ static_cast<uint32_t>(tokens[i])) * kMul;
    h ^= h >> 29;
  }
  return mix64(h);
}

// First feature ending after `start` (features are sorted and do not overlap).
std::vector<MMFeature>::const_iterator first_feature_after(const Request& request, int32_t start) {
  return std::partition_point(request.features.begin(), request.features.end(),
                              [start](const MMFeature& f) { return f.offset + f.length <= start; });
}

// hash_block(parent, tokens of block b, block_extra_keys(request, b)) for a request without
// M-RoPE, without building the extra keys (no allocation).
BlockHash hash_request_block(const Request& request, BlockHash parent, int32_t b,
                             int32_t block_size) {
  const int32_t start = b * block_size;
  const int32_t end = start + block_size;
  BlockHash h =
      hash_tokens(parent, request.token_ids.data() + static_cast<size_t>(start), block_size);
  const auto first = first_feature_after(request, start);
  auto last = first;
  while (last != request.features.end() && last->offset < end) ++last;
  static const std::string kNoSalt;
  const std::string& salt = b == 0 ? request.cache_salt : kNoSalt;
  if (salt.empty() && first == last) return h;
  h = hash_combine(h, hash_string(salt));
  h = hash_combine(h, static_cast<uint64_t>(last - first));
  for (auto it = first; it != last; ++it) {
    h = hash_combine(h, hash_string(it->identifier));
    h = hash_combine(h, static_cast<uint64_t>(static_cast<int64_t>(it->offset - start)));
  }
  return h;
}

}  // namespace

BlockHash hash_block(BlockHash parent, const TokenId* tokens, int32_t num_tokens,
                     const BlockExtraKeys& extra) {
  BlockHash h = hash_tokens(parent, tokens, num_tokens);
  if (!extra.empty()) {
    h = hash_combine(h, hash_string(extra.cache_salt));
    h = hash_combine(h, extra.items.size());
    for (const BlockItemKey& item : extra.items) {
      h = hash_combine(h, hash_string(item.identifier));
      h = hash_combine(h, static_cast<uint64_t>(static_cast<int64_t>(item.offset)));
    }
    for (int64_t pos : extra.mrope_positions) h = hash_combine(h, static_cast<uint64_t>(pos));
  }
  return h;
}

BlockExtraKeys block_extra_keys(const Request& request, int32_t block_index, int32_t block_size) {
  BlockExtraKeys extra;
  fill_block_extra_keys(request, block_index, block_size, extra);
  return extra;
}

void fill_block_extra_keys(const Request& request, int32_t block_index, int32_t block_size,
                           BlockExtraKeys& extra) {
  static const std::string kNoSalt;
  extra.cache_salt.assign(block_index == 0 ? request.cache_salt : kNoSalt);
  extra.mrope_positions.clear();
  const int32_t start = block_index * block_size;
  const int32_t end = start + block_size;
  size_t num_items = 0;
  for (auto it = first_feature_after(request, start);
       it != request.features.end() && it->offset < end; ++it, ++num_items) {
    if (num_items == extra.items.size()) extra.items.emplace_back();
    extra.items[num_items].identifier.assign(it->identifier);
    extra.items[num_items].offset = it->offset - start;
  }
  extra.items.resize(num_items);
  if (request.has_mrope()) {
    const int32_t n = request.num_prompt_tokens;
    std::vector<int64_t>& positions = extra.mrope_positions;
    positions.resize(3 * static_cast<size_t>(block_size));
    bool identity = true;
    for (int32_t d = 0; d < 3; ++d) {
      for (int32_t i = 0; i < block_size; ++i) {
        const int32_t p = start + i;
        const int64_t v = p < n ? request.mrope_positions[static_cast<size_t>(d) * n + p]
                                : p + request.mrope_delta;
        positions[static_cast<size_t>(d) * block_size + i] = v;
        identity &= v == p;
      }
    }
    if (identity) positions.clear();  // positions equal to the index add nothing to the key
  }
}

void extend_block_hashes(Request& request, int32_t block_size) {
  const int32_t num_full = request.num_tokens() / block_size;
  auto num_hashed = static_cast<int32_t>(request.block_hashes.size());
  if (num_hashed >= num_full) return;
  // Geometric growth: an exact reserve would reallocate at every block a decode step fills.
  if (request.block_hashes.capacity() < static_cast<size_t>(num_full)) {
    request.block_hashes.reserve(
        std::max(static_cast<size_t>(num_full), 2 * request.block_hashes.capacity()));
  }
  BlockHash parent = num_hashed == 0 ? kNoParentHash : request.block_hashes.back();
  for (int32_t b = num_hashed; b < num_full; ++b) {
    // Extra keys are hashed in place unless M-RoPE positions are part of them.
    const BlockHash h =
        request.has_mrope()
            ? hash_block(parent, request.token_ids.data() + static_cast<size_t>(b) * block_size,
                         block_size, block_extra_keys(request, b, block_size))
            : hash_request_block(request, parent, b, block_size);
    request.block_hashes.push_back(h);
    parent = h;
  }
}

}  // namespace mmcore
