// KV cache groups (hybrid models): sliding groups release the blocks out of their window, prefix
// hits need every group's in-window blocks, and steps carry one table and slot mapping per group.
#include <gtest/gtest.h>

#include <numeric>

#include "engine/block_manager.h"
#include "engine/scheduler.h"

namespace mmcore {
namespace {

constexpr int32_t kBs = 4;
constexpr int32_t kWindow = 4;

BlockManagerConfig hybrid_config(int32_t num_blocks) {
  return BlockManagerConfig{num_blocks, kBs, true, {-1, kWindow, kWindow}};
}

Request make_request(RequestId id, int32_t len, TokenId first = 100) {
  Request r;
  r.id = id;
  r.token_ids.resize(len);
  std::iota(r.token_ids.begin(), r.token_ids.end(), first);
  r.num_prompt_tokens = len;
  return r;
}

// Runs `r` in chunks of `chunk` tokens; caches after every chunk, or only at the end.
void run_chunks(BlockManager& bm, Request& r, int32_t chunk, bool cache_each_chunk) {
  ComputedBlocks hit = bm.get_computed_blocks(r);
  r.num_computed_tokens = 0;
  bool first = true;
  while (r.num_computed_tokens + (first ? hit.num_tokens : 0) < r.num_tokens()) {
    const int32_t start = r.num_computed_tokens + (first ? hit.num_tokens : 0);
    const int32_t n = std::min(chunk, r.num_tokens() - start);
    ASSERT_TRUE(bm.allocate_slots(r, n, first ? hit : ComputedBlocks{}).has_value());
    r.num_computed_tokens = start + n;
    first = false;
    if (cache_each_chunk) bm.cache_full_blocks(r, r.num_computed_tokens);
    bm.check_invariants();
  }
  bm.cache_full_blocks(r, r.num_computed_tokens);
  bm.check_invariants();
}

TEST(KVGroups, SlidingGroupsReleaseBlocksOutOfTheWindow) {
  BlockManager bm(hybrid_config(200));
  Request r = make_request(1, 40);
  run_chunks(bm, r, 8, true);
  // Last allocation at position 32: blocks wholly before 32 - 4 + 1 = 29 (0..6) are released.
  for (int32_t g = 1; g < 3; ++g) {
    const std::vector<BlockId>& table = bm.group_block_table(r, g);
    ASSERT_EQ(table.size(), 10u);
    for (int32_t b = 0; b < 7; ++b) EXPECT_EQ(table[b], kNoBlock) << "group " << g;
    for (int32_t b = 7; b < 10; ++b) EXPECT_NE(table[b], kNoBlock) << "group " << g;
  }
  EXPECT_EQ(bm.num_live_blocks(r), 10 + 2 * 3);
  EXPECT_EQ(bm.stats().num_sliding_blocks_freed, 14);
  EXPECT_EQ(bm.stats().num_used_blocks, 16);
  bm.free(r);
  EXPECT_EQ(bm.stats().num_used_blocks, 0);
  bm.check_invariants();
}

TEST(KVGroups, OneGroupIsUnchanged) {
  BlockManager bm({200, kBs, true, {}});
  Request r = make_request(1, 40);
  run_chunks(bm, r, 8, true);
  EXPECT_EQ(bm.num_groups(), 1);
  EXPECT_EQ(bm.num_live_blocks(r), 10);
  EXPECT_EQ(bm.stats().num_sliding_blocks_freed, 0);
}

TEST(KVGroups, PrefixHitTakesOnlyTheWindowOfSlidingGroups) {
  BlockManager bm(hybrid_config(200));
  Request a = make_request(1, 40);
  run_chunks(bm, a, 8, true);
  bm.free(a);
  Request b = make_request(2, 41);  // same 40 tokens, then one more
  ComputedBlocks hit = bm.get_computed_blocks(b);
  ASSERT_EQ(hit.num_tokens, 40);
  ASSERT_EQ(hit.group_blocks.size(), 2u);
  // The next query (position 40) sees keys from 37: block 9 only.
  for (const std::vector<BlockId>& group : hit.group_blocks) {
    ASSERT_EQ(group.size(), 10u);
    for (int32_t i = 0; i < 9; ++i) EXPECT_EQ(group[i], kNoBlock);
    EXPECT_NE(group[9], kNoBlock);
  }
  ASSERT_TRUE(bm.allocate_slots(b, 1, hit).has_value());
  bm.check_invariants();
  EXPECT_EQ(bm.num_live_blocks(b), 11 + 2 * 2);
  bm.free(b);
  bm.check_invariants();
  EXPECT_EQ(bm.stats().num_used_blocks, 0);
}

TEST(KVGroups, PrefixHitShrinksWhenASlidingGroupLacksItsWindow) {
  BlockManager bm(hybrid_config(200));
  Request a = make_request(1, 40);
  // Caching only at the end: the sliding blocks released on the way were never cached.
  run_chunks(bm, a, 8, false);
  bm.free(a);
  Request b = make_request(2, 41);
  EXPECT_EQ(bm.get_computed_blocks(b).num_tokens, 40);  // block 9 was cached in every group
  // 9 tokens in common: group 0 hits blocks 0 and 1, the sliding groups lost both.
  Request c = make_request(3, 10);
  c.token_ids[9] = 7;
  EXPECT_EQ(bm.get_computed_blocks(c).num_tokens, 0);
}

TEST(KVGroups, SchedulerStepsCarryEveryGroupsTablesAndSlots) {
  SchedulerConfig config;
  config.num_blocks = 60;
  config.block_size = kBs;
  config.max_num_batched_tokens = 12;
  config.max_num_seqs = 4;
  config.max_model_len = 128;
  config.kv_group_windows = {-1, kWindow, kWindow};
  Scheduler s(config);
  RequestId next_id = 1;
  auto add = [&](int32_t len) {
    Request r = make_request(next_id++, len);
    r.sampling.max_tokens = 10;
    s.add_request(std::move(r));
  };
  for (int32_t len : {31, 32, 33}) add(len);
  int steps = 0;
  while (s.num_running() + s.num_waiting() > 0 && steps < 300) {
    if (steps == 9 || steps == 15) add(20 + steps);  // the batch changes size mid-run
    const SchedulerOutput& out = s.schedule();
    ++steps;
    ASSERT_EQ(out.num_kv_groups, 3);
    const auto width = static_cast<size_t>(out.max_blocks_per_req);
    ASSERT_EQ(out.group_block_tables.size(), out.req_ids.size() * 2 * width);
    ASSERT_EQ(out.group_slot_mapping.size(), 2 * out.input_ids.size());
    for (int32_t i = 0; i < out.num_reqs(); ++i) {
      const Request& r = *s.find_request(out.req_ids[i]);
      for (int32_t g = 1; g <= 2; ++g) {
        // Rows completed in place step to step equal the block manager's tables exactly.
        const BlockId* row = out.group_block_tables.data() + (i * 2 + g - 1) * width;
        std::vector<BlockId> expected = s.block_manager().group_block_table(r, g);
        expected.resize(width, -1);
        ASSERT_EQ(std::vector<BlockId>(row, row + width), expected) << "step " << steps;
        for (int32_t t = out.query_start_loc[i]; t < out.query_start_loc[i + 1]; ++t) {
          const auto pos = static_cast<int32_t>(out.positions[t]);
          const BlockId block = row[pos / kBs];
          ASSERT_NE(block, kNoBlock);
          EXPECT_EQ(out.group_slot_mapping[(g - 1) * out.input_ids.size() + t],
                    static_cast<int64_t>(block) * kBs + pos % kBs);
          // Every key the token can see is held.
          for (int32_t k = std::max(0, pos - kWindow + 1); k <= pos; ++k) {
            EXPECT_NE(row[k / kBs], kNoBlock);
          }
        }
      }
    }
    s.check_invariants();
    (void)s.update_from_output(out, std::vector<TokenId>(out.sampling_req_ids.size(), 5));
    s.check_invariants();
  }
  EXPECT_EQ(s.num_running() + s.num_waiting(), 0);
  EXPECT_GT(s.stats().kv.num_sliding_blocks_freed, 0);
  EXPECT_EQ(s.stats().kv.num_used_blocks, 0);
}

TEST(KVGroups, GroupZeroMustBeFullAttention) {
  EXPECT_THROW(BlockManager(BlockManagerConfig{10, kBs, true, {8, -1}}), std::invalid_argument);
  EXPECT_THROW(BlockManager(BlockManagerConfig{10, kBs, true, {-1, 0}}), std::invalid_argument);
}

}  // namespace
}  // namespace mmcore
