#include <gtest/gtest.h>

#include <random>
#include <unordered_map>

#include "engine/block_hash_map.h"

namespace mmcore {
namespace {

TEST(BlockHashMap, InsertFindErase) {
  BlockHashMap map(8);
  EXPECT_EQ(map.find(5), -1);
  map.insert(5, 1);
  map.insert(21, 2);
  EXPECT_EQ(map.find(5), 1);
  EXPECT_EQ(map.find(21), 2);
  map.erase(5);
  EXPECT_EQ(map.find(5), -1);
  EXPECT_EQ(map.find(21), 2);
  EXPECT_EQ(map.size(), 1);
  map.erase(999);  // absent: no-op
  EXPECT_EQ(map.size(), 1);
}

// Keys sharing their low bits collide on the same home slot: erasing from the middle of long
// probe runs (including runs that wrap around the table end) must keep every other key findable.
TEST(BlockHashMap, MatchesAReferenceMapUnderHeavyCollisions) {
  constexpr int32_t kMax = 64;
  BlockHashMap map(kMax);
  std::unordered_map<BlockHash, BlockId> reference;
  std::mt19937_64 rng(7);
  for (int op = 0; op < 20000; ++op) {
    // Few distinct low bits (mostly near the table end), random high bits.
    const BlockHash key = (rng() << 8) | (120 + rng() % 8);
    if (reference.count(key) != 0) {
      map.erase(key);
      reference.erase(key);
    } else if (static_cast<int32_t>(reference.size()) < kMax) {
      const auto block = static_cast<BlockId>(rng() % 1000);
      map.insert(key, block);
      reference.emplace(key, block);
    }
    if (op % 97 == 0 && !reference.empty()) {
      auto it = reference.begin();
      std::advance(it, static_cast<long>(rng() % reference.size()));
      map.erase(it->first);
      reference.erase(it);
    }
    ASSERT_EQ(map.size(), static_cast<int32_t>(reference.size()));
  }
  for (const auto& [key, block] : reference) EXPECT_EQ(map.find(key), block);
  int32_t seen = 0;
  map.for_each([&](BlockHash key, BlockId block) {
    ++seen;
    EXPECT_EQ(reference.at(key), block);
  });
  EXPECT_EQ(seen, map.size());
}

}  // namespace
}  // namespace mmcore
