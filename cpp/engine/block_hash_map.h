#pragma once
// Prefix-cache index: chained block hash -> block id. Open addressing with linear probing and
// backward-shift deletion: no per-entry allocation, no tombstones. Keys are already well-mixed
// 64-bit hashes, so their low bits pick the home slot.
#include <cstdint>
#include <vector>

#include "block_hash.h"
#include "types.h"

namespace mmcore {

class BlockHashMap {
 public:
  // Room for `max_entries` entries at a load factor <= 1/2.
  explicit BlockHashMap(int32_t max_entries);

  [[nodiscard]] int32_t size() const { return size_; }
  // The block stored under `hash`, or -1.
  [[nodiscard]] BlockId find(BlockHash hash) const;
  // Prefetches the home slot of `hash` (a find or insert soon after then hits the cache).
  void prefetch(BlockHash hash) const { __builtin_prefetch(&slots_[home(hash)]); }
  // Precondition: `hash` is absent and size() < max_entries.
  void insert(BlockHash hash, BlockId block);
  // Removes `hash` if present.
  void erase(BlockHash hash);

  // Calls fn(hash, block) for every entry.
  template <typename Fn>
  void for_each(Fn&& fn) const {
    for (const Slot& s : slots_) {
      if (s.block >= 0) fn(s.hash, s.block);
    }
  }

 private:
  struct Slot {
    BlockHash hash = 0;
    BlockId block = -1;  // -1: empty
  };
  [[nodiscard]] size_t home(BlockHash hash) const { return static_cast<size_t>(hash) & mask_; }

  std::vector<Slot> slots_;
  size_t mask_;
  int32_t size_ = 0;
};

}  // namespace mmcore
