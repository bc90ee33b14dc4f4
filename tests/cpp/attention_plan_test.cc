// The attention launch plan (cpp/kernels/attention_plan.h): which variant takes which sequences
// of a paged step, and how many KV splits each launch uses. Host code only: runs without a GPU.
#include "kernels/attention_plan.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace mmcore::kernels {
namespace {

constexpr int kH200Sms = 132;
constexpr int kHeadDim = 128;

PagedLaunchPlan plan(int num_seqs, int num_tokens, int num_kv_heads, int group, int min_q,
                     int max_q, int max_seq_len, int min_tiles = 1) {
  return plan_paged_attention(kHeadDim, num_seqs, num_tokens, num_kv_heads, group, min_q, max_q,
                              max_seq_len, kH200Sms, min_tiles);
}

TEST(AttentionPlanTest, PureDecodeStepsLaunchTheDecodeVariantOnly) {
  const PagedLaunchPlan p = plan(8, 8, 8, 4, 1, 1, 4096);
  EXPECT_GE(p.decode_splits, 1);
  EXPECT_EQ(p.prefill_splits, 0);
}

TEST(AttentionPlanTest, PrefillChunksLaunchThePrefillVariantOnly) {
  const PagedLaunchPlan p = plan(2, 900, 8, 4, 400, 500, 900);
  EXPECT_EQ(p.decode_splits, 0);
  EXPECT_GE(p.prefill_splits, 1);
}

TEST(AttentionPlanTest, MixedStepsLaunchBothVariants) {
  const PagedLaunchPlan p = plan(250, 1530, 32, 1, 1, 640, 1400);
  EXPECT_GE(p.decode_splits, 1);
  EXPECT_GE(p.prefill_splits, 1);
}

TEST(AttentionPlanTest, TheDecodeVariantTakesUpTo16QueryRows) {
  // 4 queries x a GQA group of 4 = 16 rows still fit one decode tile; 5 x 4 do not.
  EXPECT_EQ(plan(5, 20, 8, 4, 4, 4, 4096).prefill_splits, 0);
  EXPECT_GE(plan(5, 25, 8, 4, 5, 5, 4096).prefill_splits, 1);
  EXPECT_EQ(plan(5, 25, 8, 4, 5, 5, 4096).decode_splits, 0);
  // Multi-query attention with 32 query heads per KV head: one query is 32 rows.
  EXPECT_EQ(plan(5, 5, 1, 32, 1, 1, 4096).decode_splits, 0);
}

TEST(AttentionPlanTest, ShortBatchOneDecodesSplitDownToOneTileEach) {
  // Measured on an H200 (bench/RESULTS.md, session 8): 640 keys in 10 one-tile splits took
  // 10.7 us, in 2 five-tile splits 15.7 us.
  EXPECT_EQ(plan(1, 1, 8, 4, 1, 1, 640).decode_splits, 10);
  EXPECT_EQ(plan(1, 1, 8, 4, 1, 1, 640, /*min_tiles=*/4).decode_splits, 2);
  // 4k keys: 16 splits of 4 tiles (32 splits of 2 measured slower).
  EXPECT_EQ(plan(1, 1, 8, 4, 1, 1, 4096).decode_splits, 16);
  // LLaVA-7B (32 KV heads): one wave of 256 CTAs.
  EXPECT_EQ(plan(1, 1, 32, 1, 1, 1, 16384).decode_splits, 8);
}

TEST(AttentionPlanTest, BatchesThatFillTheCardDoNotSplit) {
  EXPECT_EQ(plan(64, 64, 8, 4, 1, 1, 16384).decode_splits, 1);
  // 4096 prefill rows over 8 KV heads: 256 CTAs of 128 rows, the card's 264 slots nearly full.
  EXPECT_EQ(plan(1, 4096, 8, 1, 4096, 4096, 4096).prefill_splits, 1);
}

TEST(AttentionPlanTest, SplitCountsStayWithinTheKeyTilesAndTheLimit) {
  for (int seqs : {1, 2, 3, 7, 16, 64, 300}) {
    for (int kv_heads : {1, 2, 8, 32}) {
      for (int keys : {1, 63, 64, 65, 640, 1000, 4096, 16384, 131072}) {
        for (int min_tiles : {1, 2, 4}) {
          const int splits = attention_num_splits(AttentionVariant::kPagedDecode, kHeadDim, seqs,
                                                  seqs, kv_heads, 1, keys, kH200Sms, min_tiles);
          const int tiles = (keys + kAttentionKeysPerTile - 1) / kAttentionKeysPerTile;
          EXPECT_GE(splits, 1);
          EXPECT_LE(splits, kAttentionMaxSplits);
          EXPECT_LE(splits, std::max(1, tiles / min_tiles)) << seqs << " " << keys;
        }
      }
    }
  }
}

}  // namespace
}  // namespace mmcore::kernels
