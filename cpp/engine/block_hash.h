#pragma once
// Content hash of one full KV block, chained through its parent so that equal hashes mean equal
// prefixes. Extra keys carry what token ids alone do not show: which multimodal item (by
// identifier) covers which positions, and the cache salt. Item offsets are stored RELATIVE to the
// block start (negative when the item began in an earlier block); the chain fixes the absolute
// position. M-RoPE positions that differ from the token index (images) are part of the key too,
// so KV computed at other positions is never shared. Hashes only find candidates: the block pool
// re-compares stored contents on a hit.
#include <cstdint>
#include <string>
#include <vector>

#include "types.h"

namespace mmcore {

using BlockHash = uint64_t;

struct Request;

struct BlockItemKey {
  std::string identifier;
  int32_t offset = 0;  // item offset minus block start

  bool operator==(const BlockItemKey& other) const {
    return offset == other.offset && identifier == other.identifier;
  }
};

struct BlockExtraKeys {
  std::string cache_salt;  // only in the first block of a request
  std::vector<BlockItemKey> items;
  std::vector<int64_t> mrope_positions;  // 3 x block_size, empty when all equal the index

  [[nodiscard]] bool empty() const {
    return cache_salt.empty() && items.empty() && mrope_positions.empty();
  }
  bool operator==(const BlockExtraKeys& other) const {
    return cache_salt == other.cache_salt && items == other.items &&
           mrope_positions == other.mrope_positions;
  }
};

// splitmix64 finalizer.
[[nodiscard]] inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// 64-bit mixing of one value into a running hash (splitmix64 finalizer over a combine step).
// Inline: the block hashing loop calls it once per two tokens.
[[nodiscard]] inline BlockHash hash_combine(BlockHash seed, uint64_t value) {
  constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;
  return mix64(seed ^ (mix64(value + kGolden) + kGolden + (seed << 6) + (seed >> 2)));
}
// FNV-1a over the bytes, then mixed.
[[nodiscard]] uint64_t hash_string(const std::string& text);

// Hash of a block of `num_tokens` token ids following the block with hash `parent`
// (kNoParentHash for the first block).
inline constexpr BlockHash kNoParentHash = 0x6a09e667f3bcc909ULL;
[[nodiscard]] BlockHash hash_block(BlockHash parent, const TokenId* tokens, int32_t num_tokens,
                                   const BlockExtraKeys& extra);

// Extra keys of block `block_index` of `request`: items overlapping it, salt for block 0.
[[nodiscard]] BlockExtraKeys block_extra_keys(const Request& request, int32_t block_index,
                                              int32_t block_size);
// The same, written into `extra` (its capacity reused: no allocation on the hot path).
void fill_block_extra_keys(const Request& request, int32_t block_index, int32_t block_size,
                           BlockExtraKeys& extra);

// Appends the hashes of the request's full blocks of known tokens not hashed yet.
void extend_block_hashes(Request& request, int32_t block_size);

}  // namespace mmcore
