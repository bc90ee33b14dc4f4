#include "engine/encoder_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>

namespace mmcore {
namespace {

TEST(EncoderCache, AllocateThenHitAcrossRequests) {
  EncoderCacheManager cache(100);
  EXPECT_FALSE(cache.lookup("img-a"));
  ASSERT_TRUE(cache.can_allocate(40));
  const int64_t h = cache.allocate("img-a", 40, /*request=*/1);
  EXPECT_TRUE(cache.lookup("img-a"));
  EXPECT_EQ(cache.acquire("img-a", 2), h);
  EXPECT_EQ(cache.handle("img-a"), h);
  EXPECT_EQ(cache.num_embeds("img-a"), 40);
  EXPECT_EQ(cache.num_refs("img-a"), 2);
  const EncoderCacheStats s = cache.stats();
  EXPECT_EQ(s.num_queries, 2);
  EXPECT_EQ(s.num_hits, 1);
  EXPECT_EQ(s.used_embeds, 40);
  EXPECT_EQ(s.capacity_embeds, 100);
  EXPECT_EQ(s.num_entries, 1);
  EXPECT_EQ(s.num_referenced_entries, 1);
  cache.check_invariants();
}

TEST(EncoderCache, ContainsAndHandleDoNotCountQueries) {
  EncoderCacheManager cache(10);
  cache.allocate("x", 5, 1);
  EXPECT_TRUE(cache.contains("x"));
  EXPECT_FALSE(cache.contains("y"));
  EXPECT_FALSE(cache.handle("y").has_value());
  EXPECT_FALSE(cache.num_embeds("y").has_value());
  EXPECT_EQ(cache.stats().num_queries, 0);
}

TEST(EncoderCache, AcquireIsIdempotentPerRequest) {
  EncoderCacheManager cache(10);
  cache.allocate("x", 5, 1);
  cache.acquire("x", 1);
  cache.acquire("x", 1);
  EXPECT_EQ(cache.num_refs("x"), 1);
  cache.release("x", 1);
  EXPECT_EQ(cache.num_refs("x"), 0);
  EXPECT_EQ(cache.stats().num_referenced_entries, 0);
  cache.check_invariants();
}

TEST(EncoderCache, ReleaseIsIdempotentAndKeepsEntryCached) {
  EncoderCacheManager cache(10);
  cache.allocate("x", 5, 1);
  cache.release("x", 1);
  cache.release("x", 1);
  cache.release("x", 7);        // never referenced by 7
  cache.release("missing", 1);  // never cached
  EXPECT_TRUE(cache.contains("x"));
  EXPECT_EQ(cache.used_embeds(), 5);
  EXPECT_EQ(cache.evictable_embeds(), 5);
  EXPECT_TRUE(cache.take_freed().empty());
  cache.check_invariants();
}

TEST(EncoderCache, ReferencedEntriesAreNeverEvicted) {
  EncoderCacheManager cache(10);
  cache.allocate("a", 6, 1);
  EXPECT_FALSE(cache.can_allocate(5));
  EXPECT_THROW(cache.allocate("b", 5, 2), std::invalid_argument);
  EXPECT_TRUE(cache.contains("a"));
  EXPECT_TRUE(cache.can_allocate(4));
  cache.check_invariants();
}

TEST(EncoderCache, EvictsLeastRecentlyReleasedFirst) {
  EncoderCacheManager cache(10);
  const int64_t ha = cache.allocate("a", 3, 1);
  const int64_t hb = cache.allocate("b", 3, 2);
  const int64_t hc = cache.allocate("c", 3, 3);
  cache.release("b", 2);  // LRU order: b, a
  cache.release("a", 1);
  ASSERT_TRUE(cache.can_allocate(4));
  const int64_t hd = cache.allocate("d", 4, 4);  // needs 3 more: evicts b only
  EXPECT_FALSE(cache.contains("b"));
  EXPECT_TRUE(cache.contains("a"));
  EXPECT_EQ(cache.take_freed(), std::vector<int64_t>{hb});
  EXPECT_TRUE(cache.take_freed().empty());  // drained
  cache.allocate("e", 3, 5);                // evicts a
  EXPECT_EQ(cache.take_freed(), std::vector<int64_t>{ha});
  EXPECT_TRUE(cache.contains("c"));
  EXPECT_TRUE(cache.contains("d"));
  EXPECT_NE(hc, hd);
  cache.check_invariants();
}

TEST(EncoderCache, ReacquireRemovesFromEvictionOrder) {
  EncoderCacheManager cache(6);
  cache.allocate("a", 3, 1);
  cache.allocate("b", 3, 2);
  cache.release_all(1);
  cache.release_all(2);
  cache.acquire("a", 3);  // pinned again; only b is evictable
  EXPECT_EQ(cache.evictable_embeds(), 3);
  EXPECT_FALSE(cache.can_allocate(4));
  const int64_t hb = *cache.handle("b");
  cache.allocate("c", 3, 3);
  EXPECT_EQ(cache.take_freed(), std::vector<int64_t>{hb});
  EXPECT_TRUE(cache.contains("a"));
  cache.check_invariants();
}

TEST(EncoderCache, EvictionFreesSeveralEntriesInLruOrder) {
  EncoderCacheManager cache(9);
  const int64_t h1 = cache.allocate("1", 3, 1);
  const int64_t h2 = cache.allocate("2", 3, 1);
  const int64_t h3 = cache.allocate("3", 3, 1);
  cache.release_all(1);  // released in acquisition order: 1 is the oldest
  cache.allocate("big", 7, 2);
  EXPECT_EQ(cache.take_freed(), (std::vector<int64_t>{h1, h2, h3}));
  EXPECT_EQ(cache.used_embeds(), 7);
  cache.check_invariants();
}

TEST(EncoderCache, SharedEntryStaysPinnedUntilLastRelease) {
  EncoderCacheManager cache(5);
  cache.allocate("a", 5, 1);
  cache.acquire("a", 2);
  cache.release_all(1);
  EXPECT_FALSE(cache.can_allocate(1));
  cache.release_all(2);
  EXPECT_TRUE(cache.can_allocate(5));
  cache.check_invariants();
}

TEST(EncoderCache, HandlesAreNeverReused) {
  EncoderCacheManager cache(4);
  std::vector<int64_t> handles;
  for (int i = 0; i < 5; ++i) {
    handles.push_back(cache.allocate("same", 4, i));
    cache.release("same", i);
    ASSERT_TRUE(cache.can_allocate(4));
    cache.allocate("other" + std::to_string(i), 4, 100 + i);  // evicts "same"
    cache.release_all(100 + i);
    ASSERT_TRUE(cache.can_allocate(4));
    cache.allocate("filler" + std::to_string(i), 4, 200 + i);  // evicts "other"
    cache.release_all(200 + i);
    cache.allocate("x" + std::to_string(i), 4, 300 + i);  // evicts "filler"
    cache.release_all(300 + i);
  }
  std::sort(handles.begin(), handles.end());
  EXPECT_EQ(std::adjacent_find(handles.begin(), handles.end()), handles.end());
  cache.check_invariants();
}

TEST(EncoderCache, ZeroCapacityStoresNothing) {
  EncoderCacheManager cache(0);
  EXPECT_FALSE(cache.can_allocate(1));
  EXPECT_THROW(cache.allocate("a", 1, 1), std::invalid_argument);
  cache.check_invariants();
}

TEST(EncoderCache, EntryLargerThanCapacityCanNeverBeStored) {
  EncoderCacheManager cache(8);
  EXPECT_FALSE(cache.can_allocate(9));
  EXPECT_TRUE(cache.can_allocate(8));
}

TEST(EncoderCache, RejectsBadArguments) {
  EXPECT_THROW(EncoderCacheManager(-1), std::invalid_argument);
  EncoderCacheManager cache(10);
  EXPECT_FALSE(cache.can_allocate(0));
  EXPECT_FALSE(cache.can_allocate(-3));
  EXPECT_THROW(cache.allocate("a", 0, 1), std::invalid_argument);
  EXPECT_THROW(cache.acquire("missing", 1), std::invalid_argument);
  cache.allocate("a", 2, 1);
  try {
    cache.allocate("a", 2, 2);
    FAIL() << "duplicate allocate must throw";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("already holds item 'a'"), std::string::npos);
  }
  cache.check_invariants();
}

TEST(EncoderCache, ReleaseAllOnlyTouchesThatRequest) {
  EncoderCacheManager cache(20);
  cache.allocate("a", 5, 1);
  cache.allocate("b", 5, 1);
  cache.acquire("b", 2);
  cache.release_all(1);
  EXPECT_EQ(cache.num_refs("a"), 0);
  EXPECT_EQ(cache.num_refs("b"), 1);
  EXPECT_EQ(cache.evictable_embeds(), 5);
  cache.release_all(1);  // idempotent
  cache.release_all(42);
  cache.check_invariants();
}

}  // namespace
}  // namespace mmcore
