#include <gtest/gtest.h>

#include <numeric>
#include <set>
#include <stdexcept>

#include "engine/block_manager.h"

namespace mmcore {
namespace {

constexpr int32_t kBs = 4;

Request make_request(RequestId id, std::vector<TokenId> tokens,
                     std::vector<MMFeature> features = {}, std::string salt = "") {
  Request r;
  r.id = id;
  r.token_ids = std::move(tokens);
  r.num_prompt_tokens = r.num_tokens();
  r.features = std::move(features);
  r.cache_salt = std::move(salt);
  return r;
}

std::vector<TokenId> iota_tokens(int32_t n, TokenId start = 100) {
  std::vector<TokenId> t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}

MMFeature image(const std::string& id, int32_t offset, int32_t length) {
  MMFeature f;
  f.identifier = id;
  f.offset = offset;
  f.length = length;
  f.num_embeds = length;
  return f;
}

// Allocates the whole request (after its prefix hit), marks it computed and caches its blocks.
ComputedBlocks run_whole(BlockManager& bm, Request& r) {
  ComputedBlocks hit = bm.get_computed_blocks(r);
  auto n = bm.allocate_slots(r, r.num_tokens() - hit.num_tokens, hit);
  EXPECT_TRUE(n.has_value());
  r.num_computed_tokens = r.num_tokens();
  bm.cache_full_blocks(r, r.num_computed_tokens);
  bm.check_invariants();
  return hit;
}

TEST(BlockManager, AllocateAndFreeCountBlocks) {
  BlockManager bm({10, kBs, true});
  Request r = make_request(1, iota_tokens(9));
  ASSERT_TRUE(bm.can_allocate(r, 9));
  auto n = bm.allocate_slots(r, 9);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 3);
  EXPECT_EQ(bm.block_table(r).size(), 3u);
  EXPECT_EQ(bm.stats().num_used_blocks, 3);
  r.num_computed_tokens = 9;
  // Growing inside the last block needs no block; crossing the boundary needs one.
  EXPECT_EQ(*bm.allocate_slots(r, 3), 0);
  EXPECT_EQ(*bm.allocate_slots(r, 4), 1);
  bm.check_invariants();
  bm.free(r);
  EXPECT_EQ(bm.stats().num_used_blocks, 0);
  EXPECT_EQ(bm.stats().num_free_blocks, 10);
  EXPECT_TRUE(bm.block_table(r).empty());
  bm.check_invariants();
}

TEST(BlockManager, ReturnsNulloptWithoutSideEffectsWhenFull) {
  BlockManager bm({4, kBs, true});
  Request a = make_request(1, iota_tokens(12));
  ASSERT_TRUE(bm.allocate_slots(a, 12).has_value());
  Request b = make_request(2, iota_tokens(8, 500));
  EXPECT_FALSE(bm.can_allocate(b, 8));
  EXPECT_FALSE(bm.allocate_slots(b, 8).has_value());
  EXPECT_TRUE(bm.block_table(b).empty());
  EXPECT_EQ(bm.stats().num_free_blocks, 1);
  EXPECT_TRUE(bm.allocate_slots(b, 4).has_value());
  bm.check_invariants();
}

TEST(BlockManager, PrefixHitNeverCoversTheLastToken) {
  BlockManager bm({16, kBs, true});
  Request a = make_request(1, iota_tokens(8));
  run_whole(bm, a);
  bm.free(a);
  // Same 8 tokens: only the first block may be reused, the last token must be recomputed.
  Request b = make_request(2, iota_tokens(8));
  ComputedBlocks hit = bm.get_computed_blocks(b);
  EXPECT_EQ(hit.num_tokens, 4);
  ASSERT_EQ(hit.blocks.size(), 1u);
  // A longer request with that prefix reuses both blocks.
  Request c = make_request(3, iota_tokens(11));
  EXPECT_EQ(bm.get_computed_blocks(c).num_tokens, 8);
}

TEST(BlockManager, SharedPrefixIsReferencedTwiceAndCounted) {
  BlockManager bm({16, kBs, true});
  Request a = make_request(1, iota_tokens(10));
  run_whole(bm, a);
  Request b = make_request(2, iota_tokens(10));
  ComputedBlocks hit = run_whole(bm, b);
  EXPECT_EQ(hit.num_tokens, 8);
  EXPECT_EQ(bm.block_table(a)[0], bm.block_table(b)[0]);
  EXPECT_EQ(bm.block_table(a)[1], bm.block_table(b)[1]);
  EXPECT_NE(bm.block_table(a)[2], bm.block_table(b)[2]);
  EXPECT_EQ(bm.stats().num_used_blocks, 4);
  EXPECT_EQ(bm.stats().prefix_queries, 20);
  EXPECT_EQ(bm.stats().prefix_hits, 8);
  bm.free(a);
  bm.check_invariants();
  EXPECT_EQ(bm.stats().num_used_blocks, 3);
  bm.free(b);
  bm.check_invariants();
}

TEST(BlockManager, DifferentImagesNeverShareSameImageDoes) {
  BlockManager bm({32, kBs, true});
  std::vector<TokenId> tokens(12, 7);  // identical placeholder tokens
  Request a = make_request(1, tokens, {image("cat", 2, 8)});
  run_whole(bm, a);
  Request b = make_request(2, tokens, {image("dog", 2, 8)});
  EXPECT_EQ(bm.get_computed_blocks(b).num_tokens, 0);
  Request c = make_request(3, tokens, {image("cat", 2, 8)});
  EXPECT_EQ(bm.get_computed_blocks(c).num_tokens, 8);
  // Same image at another position: the first block differs (relative offsets differ).
  Request d = make_request(4, tokens, {image("cat", 3, 8)});
  EXPECT_EQ(bm.get_computed_blocks(d).num_tokens, 0);
  // Text-only prefix before an image: the first block holds no item and is shared.
  std::vector<TokenId> t2(12, 7);
  Request e = make_request(5, t2, {image("cat", 4, 4)});
  run_whole(bm, e);
  Request f = make_request(6, t2, {image("dog", 4, 4)});
  EXPECT_EQ(bm.get_computed_blocks(f).num_tokens, 4);
}

TEST(BlockManager, CacheSaltSeparatesNamespaces) {
  BlockManager bm({16, kBs, true});
  Request a = make_request(1, iota_tokens(9), {}, "alice");
  run_whole(bm, a);
  Request b = make_request(2, iota_tokens(9), {}, "bob");
  EXPECT_EQ(bm.get_computed_blocks(b).num_tokens, 0);
  Request c = make_request(3, iota_tokens(9), {}, "alice");
  EXPECT_EQ(bm.get_computed_blocks(c).num_tokens, 8);
  Request d = make_request(4, iota_tokens(9));
  EXPECT_EQ(bm.get_computed_blocks(d).num_tokens, 0);
}

TEST(BlockManager, FreedCachedBlocksAreEvictedLeastRecentlyUsedFirst) {
  BlockManager bm({4, kBs, true});
  Request a = make_request(1, iota_tokens(9, 0));
  run_whole(bm, a);  // 3 blocks, 2 full and cached
  bm.free(a);
  EXPECT_EQ(bm.stats().num_cached_blocks, 2);
  // Needs 2 blocks: takes the never-used block, then a's tail (freed first): a's prefix stays.
  Request b = make_request(2, iota_tokens(8, 1000));
  ASSERT_TRUE(bm.allocate_slots(b, 8).has_value());
  Request a2 = make_request(3, iota_tokens(9, 0));
  EXPECT_EQ(bm.get_computed_blocks(a2).num_tokens, 8);
  // One more block: evicts a's second block (its first survives, being freed last).
  Request c = make_request(4, iota_tokens(4, 2000));
  ASSERT_TRUE(bm.allocate_slots(c, 4).has_value());
  EXPECT_EQ(bm.get_computed_blocks(a2).num_tokens, 4);
  EXPECT_EQ(bm.stats().num_cached_blocks, 1);
  bm.check_invariants();
}

TEST(BlockManager, HitOnFreeCachedBlockTakesItOutOfTheFreeQueue) {
  BlockManager bm({3, kBs, true});
  Request a = make_request(1, iota_tokens(9, 0));
  run_whole(bm, a);
  bm.free(a);
  Request b = make_request(2, iota_tokens(9, 0));
  ComputedBlocks hit = bm.get_computed_blocks(b);
  ASSERT_EQ(hit.num_tokens, 8);
  // 3 blocks needed, 2 come from the hit: fits although 2 of 3 free blocks are the hit.
  ASSERT_TRUE(bm.can_allocate(b, 1, hit));
  EXPECT_FALSE(bm.can_allocate(b, 5, hit));
  ASSERT_TRUE(bm.allocate_slots(b, 1, hit).has_value());
  EXPECT_EQ(bm.stats().num_free_blocks, 0);
  bm.check_invariants();
}

TEST(BlockManager, ReusedBlocksLoseTheirCachedContent) {
  BlockManager bm({3, kBs, true});
  Request a = make_request(1, iota_tokens(9, 0));
  run_whole(bm, a);
  const BlockId first = bm.block_table(a)[0];
  bm.free(a);
  // Reuse exactly a's first block for other content while its child stays cached.
  Request b = make_request(2, iota_tokens(4, 900));
  ASSERT_TRUE(bm.allocate_slots(b, 4).has_value());
  Request c = make_request(3, iota_tokens(4, 901));
  ASSERT_TRUE(bm.allocate_slots(c, 4).has_value());
  Request d = make_request(4, iota_tokens(4, 902));
  ASSERT_TRUE(bm.allocate_slots(d, 4).has_value());
  std::set<BlockId> taken = {bm.block_table(b)[0], bm.block_table(c)[0], bm.block_table(d)[0]};
  EXPECT_TRUE(taken.count(first));
  Request again = make_request(5, iota_tokens(9, 0));
  EXPECT_EQ(bm.get_computed_blocks(again).num_tokens, 0);
  EXPECT_EQ(bm.stats().num_cached_blocks, 0);
}

TEST(BlockPool, HashHitWithOtherContentIsRejected) {
  BlockPool pool(4, kBs);
  const BlockId b = pool.allocate();
  std::vector<TokenId> stored = {1, 2, 3, 4};
  std::vector<TokenId> other = {1, 2, 3, 5};
  ASSERT_TRUE(pool.cache(b, 42, stored.data(), {}, kNoBlock));
  EXPECT_EQ(pool.find_cached(42, stored.data(), {}, kNoBlock), b);
  // Same (forced) hash, different tokens / extra keys / parent: a collision must not hit.
  EXPECT_FALSE(pool.find_cached(42, other.data(), {}, kNoBlock).has_value());
  BlockExtraKeys extra{"salt", {}};
  EXPECT_FALSE(pool.find_cached(42, stored.data(), extra, kNoBlock).has_value());
  EXPECT_FALSE(pool.find_cached(42, stored.data(), {}, 3).has_value());
  // A second block cannot take the same hash.
  const BlockId c = pool.allocate();
  EXPECT_FALSE(pool.cache(c, 42, other.data(), {}, kNoBlock));
}

TEST(BlockPool, ChildOfAReusedParentNoLongerMatches) {
  BlockPool pool(4, kBs);
  std::vector<TokenId> p_tokens = {1, 2, 3, 4};
  std::vector<TokenId> c_tokens = {5, 6, 7, 8};
  const BlockId parent = pool.allocate();
  const BlockId child = pool.allocate();
  ASSERT_TRUE(pool.cache(parent, 10, p_tokens.data(), {}, kNoBlock));
  ASSERT_TRUE(pool.cache(child, 11, c_tokens.data(), {}, parent));
  EXPECT_EQ(pool.find_cached(11, c_tokens.data(), {}, parent), child);
  // Drain the never-used blocks so that the parent is the next block handed out.
  (void)pool.allocate();
  (void)pool.allocate();
  pool.release(parent);
  pool.release(child);
  ASSERT_EQ(pool.allocate(), parent);
  // Same content cached again in the same block: the old child was computed after the old
  // content and must not be trusted, although ids, hash and tokens all match.
  ASSERT_TRUE(pool.cache(parent, 10, p_tokens.data(), {}, kNoBlock));
  EXPECT_FALSE(pool.find_cached(11, c_tokens.data(), {}, parent).has_value());
}

TEST(BlockPool, InvariantCheckNamesWrongReferenceCounts) {
  BlockPool pool(2, kBs);
  const BlockId b = pool.allocate();
  std::vector<int32_t> refs = {0, 0};
  try {
    pool.check_invariants(refs);
    FAIL() << "expected std::logic_error";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("block " + std::to_string(b)), std::string::npos);
  }
  refs[b] = 1;
  EXPECT_NO_THROW(pool.check_invariants(refs));
}

TEST(BlockHash, ChainedAndSensitiveToEveryInput) {
  std::vector<TokenId> t = {1, 2, 3, 4};
  const BlockHash h = hash_block(kNoParentHash, t.data(), 4, {});
  EXPECT_NE(h, hash_block(h, t.data(), 4, {}));
  std::vector<TokenId> t2 = {1, 2, 4, 3};
  EXPECT_NE(h, hash_block(kNoParentHash, t2.data(), 4, {}));
  BlockExtraKeys e1{"", {{"img", 0}}};
  BlockExtraKeys e2{"", {{"img", 1}}};
  BlockExtraKeys e3{"", {{"imh", 0}}};
  EXPECT_NE(hash_block(kNoParentHash, t.data(), 4, e1), hash_block(kNoParentHash, t.data(), 4, e2));
  EXPECT_NE(hash_block(kNoParentHash, t.data(), 4, e1), hash_block(kNoParentHash, t.data(), 4, e3));
}

TEST(BlockHash, ExtraKeysListOverlappingItemsRelativeToBlockStart) {
  Request r = make_request(1, std::vector<TokenId>(16, 0), {image("a", 2, 3), image("b", 6, 6)});
  BlockExtraKeys k0 = block_extra_keys(r, 0, kBs);
  ASSERT_EQ(k0.items.size(), 1u);
  EXPECT_EQ(k0.items[0].offset, 2);
  BlockExtraKeys k1 = block_extra_keys(r, 1, kBs);  // tokens 4..7: end of "a", start of "b"
  ASSERT_EQ(k1.items.size(), 2u);
  EXPECT_EQ(k1.items[0].identifier, "a");
  EXPECT_EQ(k1.items[0].offset, -2);
  EXPECT_EQ(k1.items[1].offset, 2);
  BlockExtraKeys k3 = block_extra_keys(r, 3, kBs);
  EXPECT_TRUE(k3.items.empty());
}

TEST(BlockHash, ExtendedHashesEqualHashOfExtraKeys) {
  // extend_block_hashes hashes extra keys in place: it must match hash_block(block_extra_keys).
  std::vector<TokenId> tokens(20);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<TokenId>(7 * i + 1);
  for (const std::string& salt : {std::string(), std::string("salt")}) {
    Request r = make_request(1, tokens, {image("a", 2, 3), image("b", 6, 6)});
    r.cache_salt = salt;
    extend_block_hashes(r, kBs);
    ASSERT_EQ(r.block_hashes.size(), 5u);
    BlockHash parent = kNoParentHash;
    for (int32_t b = 0; b < 5; ++b) {
      const BlockHash expected =
          hash_block(parent, r.token_ids.data() + b * kBs, kBs, block_extra_keys(r, b, kBs));
      EXPECT_EQ(r.block_hashes[b], expected) << "salt '" << salt << "' block " << b;
      parent = expected;
    }
  }
}

}  // namespace
}  // namespace mmcore
