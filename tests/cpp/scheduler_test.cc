#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "engine/scheduler.h"

namespace mmcore {
namespace {

SchedulerConfig small_config() {
  SchedulerConfig c;
  c.num_blocks = 64;
  c.block_size = 4;
  c.max_num_batched_tokens = 64;
  c.max_num_seqs = 8;
  c.max_model_len = 128;
  c.encoder_budget = 64;
  c.encoder_cache_size = 64;
  return c;
}

Request text_request(RequestId id, int32_t len, int32_t max_tokens = 4, TokenId first = 100) {
  Request r;
  r.id = id;
  r.token_ids.resize(len);
  std::iota(r.token_ids.begin(), r.token_ids.end(), first);
  r.sampling.max_tokens = max_tokens;
  return r;
}

MMFeature image(const std::string& id, int32_t offset, int32_t length,
                std::vector<uint8_t> mask = {}) {
  MMFeature f;
  f.identifier = id;
  f.offset = offset;
  f.length = length;
  f.embed_mask = std::move(mask);
  f.num_embeds =
      f.embed_mask.empty()
          ? length
          : static_cast<int32_t>(std::count(f.embed_mask.begin(), f.embed_mask.end(), 1));
  return f;
}

Request image_request(RequestId id, const std::string& image_id, int32_t text_before,
                      int32_t image_len, int32_t text_after, std::vector<uint8_t> mask = {}) {
  Request r = text_request(id, text_before + image_len + text_after);
  r.features.push_back(image(image_id, text_before, image_len, std::move(mask)));
  return r;
}

std::vector<TokenId> sample_all(const SchedulerOutput& out, TokenId token) {
  return std::vector<TokenId>(out.sampling_req_ids.size(), token);
}

TEST(Scheduler, PrefillThenDecodeUntilMaxTokens) {
  Scheduler s(small_config());
  s.add_request(text_request(1, 6, 3));
  const SchedulerOutput& first = s.schedule();
  ASSERT_EQ(first.num_reqs(), 1);
  EXPECT_EQ(first.num_tokens(), 6);
  EXPECT_EQ(first.input_ids, std::vector<TokenId>({100, 101, 102, 103, 104, 105}));
  EXPECT_EQ(first.positions, std::vector<int64_t>({0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(first.max_blocks_per_req, 2);
  EXPECT_EQ(first.logits_indices, std::vector<int32_t>({5}));
  const BlockId b1 = first.block_tables[1];
  EXPECT_EQ(first.slot_mapping[5], b1 * 4 + 1);
  UpdateResult r = s.update_from_output(first, {7});
  EXPECT_EQ(r.token_ids, std::vector<TokenId>({7}));
  const SchedulerOutput& second = s.schedule();
  EXPECT_EQ(second.input_ids, std::vector<TokenId>({7}));
  EXPECT_EQ(second.positions, std::vector<int64_t>({6}));
  EXPECT_EQ(second.num_computed_tokens, std::vector<int32_t>({6}));
  (void)s.update_from_output(second, {8});
  const SchedulerOutput& third = s.schedule();
  r = s.update_from_output(third, {9});
  ASSERT_EQ(r.finished_req_ids, std::vector<RequestId>({1}));
  EXPECT_EQ(r.finish_statuses[0], RequestStatus::kFinishedLength);
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(s.stats().kv.num_used_blocks, 0);
  EXPECT_EQ(s.schedule().finished_req_ids, std::vector<RequestId>({1}));
  s.check_invariants();
}

TEST(Scheduler, EosStopsOnlyAfterMinTokensUnlessIgnored) {
  Scheduler s(small_config());
  Request a = text_request(1, 3, 10);
  a.sampling.eos_token_ids = {2};
  a.sampling.min_tokens = 2;
  s.add_request(std::move(a));
  Request b = text_request(2, 3, 3);
  b.sampling.eos_token_ids = {2};
  b.sampling.ignore_eos = true;
  s.add_request(std::move(b));
  UpdateResult r = s.update_from_output(s.schedule(), {2, 2});  // a: 1 token < min_tokens
  EXPECT_TRUE(r.finished_req_ids.empty());
  r = s.update_from_output(s.schedule(), {2, 2});
  ASSERT_EQ(r.finished_req_ids, std::vector<RequestId>({1}));
  EXPECT_EQ(r.finish_statuses[0], RequestStatus::kFinishedStopped);
  r = s.update_from_output(s.schedule(), {2});
  ASSERT_EQ(r.finished_req_ids, std::vector<RequestId>({2}));
  EXPECT_EQ(r.finish_statuses[0], RequestStatus::kFinishedLength);
}

TEST(Scheduler, ChunkedPrefillSplitsByTokenBudgetAndSamplesAtTheEnd) {
  SchedulerConfig c = small_config();
  c.max_num_batched_tokens = 4;
  Scheduler s(c);
  s.add_request(text_request(1, 10));
  std::vector<int32_t> chunks;
  for (int step = 0; step < 3; ++step) {
    const SchedulerOutput& out = s.schedule();
    chunks.push_back(out.num_scheduled_tokens[0]);
    EXPECT_EQ(out.logits_indices.empty(), step < 2);
    (void)s.update_from_output(out, sample_all(out, 1));
  }
  EXPECT_EQ(chunks, std::vector<int32_t>({4, 4, 2}));
}

TEST(Scheduler, RunningRequestsComeFirstThenWaitingByPriority) {
  SchedulerConfig c = small_config();
  c.max_num_batched_tokens = 8;
  Scheduler s(c);
  s.add_request(text_request(1, 3));
  (void)s.update_from_output(s.schedule(), {5});
  Request low = text_request(2, 3);
  low.priority = 5;
  Request high = text_request(3, 3);
  high.priority = 0;
  s.add_request(std::move(low));
  s.add_request(std::move(high));
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.req_ids, std::vector<RequestId>({1, 3, 2}));
  EXPECT_EQ(out.num_scheduled_tokens, std::vector<int32_t>({1, 3, 3}));
  EXPECT_EQ(out.query_start_loc, std::vector<int32_t>({0, 1, 4, 7}));
}

TEST(Scheduler, PrefixCacheHitSkipsComputedBlocks) {
  Scheduler s(small_config());
  s.add_request(text_request(1, 10, 1));
  (void)s.update_from_output(s.schedule(), {1});
  s.add_request(text_request(2, 10, 1));
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.num_computed_tokens, std::vector<int32_t>({8}));
  EXPECT_EQ(out.input_ids, std::vector<TokenId>({108, 109}));
  EXPECT_EQ(s.stats().kv.prefix_hits, 8);
}

TEST(Scheduler, PreemptsTheNewestRequestWhenBlocksRunOut) {
  SchedulerConfig c = small_config();
  c.num_blocks = 4;
  c.enable_prefix_caching = false;
  Scheduler s(c);
  s.add_request(text_request(1, 7, 8));
  s.add_request(text_request(2, 7, 8, 300));
  (void)s.update_from_output(s.schedule(), {1, 1});  // 2 + 2 blocks: the cache is full
  (void)s.update_from_output(s.schedule(), {2, 2});  // position 7 still fits
  const SchedulerOutput& out = s.schedule();         // position 8 needs a 5th block
  EXPECT_EQ(out.preempted_req_ids, std::vector<RequestId>({2}));
  EXPECT_EQ(out.req_ids, std::vector<RequestId>({1}));
  EXPECT_EQ(s.num_waiting(), 1);
  s.check_invariants();
  (void)s.update_from_output(out, {3});
  // Request 1 runs to its end, then request 2 recomputes prompt + its 2 generated tokens.
  std::vector<TokenId> resumed_inputs;
  for (int step = 0; step < 40 && s.has_unfinished_requests(); ++step) {
    const SchedulerOutput& o = s.schedule();
    for (int32_t i = 0; i < o.num_reqs(); ++i) {
      if (o.req_ids[i] == 2 && o.num_computed_tokens[i] == 0) {
        resumed_inputs.assign(o.input_ids.begin() + o.query_start_loc[i],
                              o.input_ids.begin() + o.query_start_loc[i + 1]);
      }
    }
    (void)s.update_from_output(o, sample_all(o, 4));
    s.check_invariants();
  }
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(resumed_inputs, std::vector<TokenId>({300, 301, 302, 303, 304, 305, 306, 1, 2}));
  EXPECT_GE(s.stats().num_preemptions, 1);
  EXPECT_EQ(s.stats().kv.num_used_blocks, 0);
}

TEST(Scheduler, PreemptedRequestLongerThanTheTokenBudgetResumesWithoutChunkedPrefill) {
  // Regression: with chunked prefill off, a preempted request whose prompt plus output exceeded
  // max_num_batched_tokens could never be scheduled again (no progress, queue blocked).
  SchedulerConfig c = small_config();
  c.num_blocks = 5;
  c.max_num_batched_tokens = 8;
  c.enable_prefix_caching = false;
  c.enable_chunked_prefill = false;
  Scheduler s(c);
  s.add_request(text_request(1, 4, 12));
  s.add_request(text_request(2, 7, 12, 300));
  int32_t generated_2 = 0;
  int32_t longest_resume = 0;
  for (int step = 0; step < 100 && s.has_unfinished_requests(); ++step) {
    const SchedulerOutput& out = s.schedule();
    EXPECT_LE(out.num_tokens(), c.max_num_batched_tokens);
    for (int32_t i = 0; i < out.num_reqs(); ++i) {
      if (out.req_ids[i] == 2 && s.stats().num_preemptions > 0) {
        longest_resume = std::max(longest_resume, out.num_scheduled_tokens[i]);
      }
    }
    const UpdateResult res = s.update_from_output(out, sample_all(out, 1));
    generated_2 += static_cast<int32_t>(std::count(res.req_ids.begin(), res.req_ids.end(), 2));
    s.check_invariants();
  }
  EXPECT_GE(s.stats().num_preemptions, 1);
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(generated_2, 12);
  EXPECT_EQ(longest_resume, c.max_num_batched_tokens);  // recomputed in budget-sized chunks
  EXPECT_EQ(s.stats().kv.num_used_blocks, 0);
}

TEST(Scheduler, RequestsThatCanNeverRunAreRejected) {
  SchedulerConfig c = small_config();
  c.num_blocks = 4;
  c.max_model_len = 20;
  c.encoder_budget = 8;
  Scheduler s(c);
  EXPECT_THROW(s.add_request(text_request(1, 21)), std::invalid_argument);
  EXPECT_THROW(s.add_request(text_request(1, 15, 10)), std::invalid_argument);  // 20 > 16 slots
  EXPECT_THROW(s.add_request(image_request(1, "big", 0, 9, 1)), std::invalid_argument);
  Request bad_mask = image_request(1, "m", 0, 3, 1, {1, 0, 1});
  bad_mask.features[0].num_embeds = 3;
  EXPECT_THROW(s.add_request(std::move(bad_mask)), std::invalid_argument);
  s.add_request(text_request(1, 4));
  EXPECT_THROW(s.add_request(text_request(1, 4)), std::invalid_argument);
  EXPECT_EQ(s.num_waiting(), 1);
}

TEST(Scheduler, ImageIsEncodedOnceAndScatteredThroughItsMask) {
  Scheduler s(small_config());
  // 2 text tokens, a 6-token item whose first and last positions take no embedding, 2 text.
  s.add_request(image_request(1, "cat", 2, 6, 2, {0, 1, 1, 1, 1, 0}));
  s.add_request(image_request(2, "cat", 1, 6, 1, {0, 1, 1, 1, 1, 0}));
  const SchedulerOutput& out = s.schedule();
  ASSERT_EQ(out.encoder_handles.size(), 1u);  // the second request hits the first's entry
  EXPECT_EQ(out.encoder_req_ids, std::vector<RequestId>({1}));
  EXPECT_EQ(out.scatter_handles, std::vector<int64_t>(2, out.encoder_handles[0]));
  EXPECT_EQ(out.scatter_src_offsets, std::vector<int32_t>({0, 0}));
  EXPECT_EQ(out.scatter_dst_rows, std::vector<int32_t>({3, 10 + 2}));
  EXPECT_EQ(out.scatter_lens, std::vector<int32_t>({4, 4}));
  EXPECT_EQ(s.stats().encoder.num_hits, 1);
}

TEST(Scheduler, ChunkInsideAnImageScattersTheRightEmbeddings) {
  SchedulerConfig c = small_config();
  c.max_num_batched_tokens = 5;
  Scheduler s(c);
  s.add_request(image_request(1, "cat", 2, 8, 1));
  const SchedulerOutput& first = s.schedule();  // tokens 0..4: encodes the whole item
  ASSERT_EQ(first.encoder_handles.size(), 1u);
  EXPECT_EQ(first.scatter_src_offsets, std::vector<int32_t>({0}));
  EXPECT_EQ(first.scatter_dst_rows, std::vector<int32_t>({2}));
  EXPECT_EQ(first.scatter_lens, std::vector<int32_t>({3}));
  const int64_t handle = first.encoder_handles[0];
  (void)s.update_from_output(first, {});
  const SchedulerOutput& second = s.schedule();  // tokens 5..9: cached, no encoder work
  EXPECT_TRUE(second.encoder_handles.empty());
  EXPECT_EQ(second.scatter_handles, std::vector<int64_t>({handle}));
  EXPECT_EQ(second.scatter_src_offsets, std::vector<int32_t>({3}));
  EXPECT_EQ(second.scatter_dst_rows, std::vector<int32_t>({0}));
  EXPECT_EQ(second.scatter_lens, std::vector<int32_t>({5}));
  (void)s.update_from_output(second, {});
  EXPECT_EQ(s.stats().encoder.num_referenced_entries, 0);  // released once fully computed
}

TEST(Scheduler, ChunkStopsBeforeAnImageTheEncoderBudgetCannotTake) {
  SchedulerConfig c = small_config();
  c.encoder_budget = 8;
  Scheduler s(c);
  s.add_request(image_request(1, "cat", 1, 8, 1));
  s.add_request(image_request(2, "dog", 3, 8, 1));
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.encoder_req_ids, std::vector<RequestId>({1}));
  EXPECT_EQ(out.num_scheduled_tokens, std::vector<int32_t>({10, 3}));  // 2 stops before "dog"
  EXPECT_TRUE(out.sampling_req_ids.size() == 1 && out.sampling_req_ids[0] == 1);
  (void)s.update_from_output(out, {1});
  const SchedulerOutput& next = s.schedule();
  EXPECT_EQ(next.encoder_req_ids, std::vector<RequestId>({2}));
}

TEST(Scheduler, RequestWhoseChunkWouldStartInsideAnUnencodableImageWaits) {
  SchedulerConfig c = small_config();
  c.encoder_budget = 8;
  Scheduler s(c);
  s.add_request(image_request(1, "cat", 0, 8, 1));
  s.add_request(image_request(2, "dog", 0, 8, 1));
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.req_ids, std::vector<RequestId>({1}));
  EXPECT_EQ(s.num_waiting(), 1);
}

// Regression: an image used twice must not stay pinned between its uses, or a different image
// in between can never fit a small encoder cache.
TEST(Scheduler, ReusedImageDoesNotBlockAnotherImageInBetween) {
  SchedulerConfig c = small_config();
  c.encoder_cache_size = 12;
  c.encoder_budget = 12;
  c.max_num_batched_tokens = 13;
  Scheduler s(c);
  Request r = text_request(1, 20, 1);
  r.features = {image("a", 0, 5), image("b", 5, 7), image("a", 12, 5)};
  s.add_request(std::move(r));
  for (int step = 0; step < 10 && s.has_unfinished_requests(); ++step) {
    const SchedulerOutput& out = s.schedule();
    (void)s.update_from_output(out, sample_all(out, 1));
    s.check_invariants();
  }
  EXPECT_FALSE(s.has_unfinished_requests());
  EXPECT_EQ(s.stats().encoder.num_referenced_entries, 0);
}

TEST(Scheduler, OverlappedStepMarksPendingTokens) {
  Scheduler s(small_config());
  s.add_request(text_request(1, 3, 5));
  s.add_request(text_request(2, 5, 5));
  const SchedulerOutput& first = s.schedule();
  const SchedulerOutput& second = s.schedule();
  EXPECT_EQ(second.input_ids, std::vector<TokenId>({-1, -1}));
  EXPECT_EQ(second.prev_sample_index, std::vector<int32_t>({0, 1}));
  EXPECT_EQ(second.positions, std::vector<int64_t>({3, 5}));
  EXPECT_THROW((void)s.schedule(), std::logic_error);
  EXPECT_THROW((void)s.update_from_output(second, {1, 1}), std::logic_error);  // out of order
  (void)s.update_from_output(first, {10, 20});
  s.finish_request(2, RequestStatus::kFinishedAborted);
  UpdateResult r = s.update_from_output(second, {11, 21});
  EXPECT_EQ(r.req_ids, std::vector<RequestId>({1}));
  EXPECT_EQ(r.token_ids, std::vector<TokenId>({11}));
  const SchedulerOutput& third = s.schedule();
  EXPECT_EQ(third.finished_req_ids, std::vector<RequestId>({2}));
  EXPECT_EQ(third.input_ids, std::vector<TokenId>({11}));
  s.check_invariants();
}

TEST(Scheduler, FinishRequestFreesEverythingAndIgnoresUnknownIds) {
  Scheduler s(small_config());
  s.add_request(image_request(1, "cat", 1, 8, 1));
  (void)s.schedule();
  s.finish_request(1, RequestStatus::kFinishedAborted);
  s.finish_request(99, RequestStatus::kFinishedAborted);
  EXPECT_EQ(s.stats().kv.num_used_blocks, 0);
  EXPECT_EQ(s.stats().encoder.num_referenced_entries, 0);
  EXPECT_FALSE(s.has_unfinished_requests());
  s.check_invariants();
}

TEST(Scheduler, MropePositionsUseThreeRowsAndDeltaForGeneratedTokens) {
  Scheduler s(small_config());
  Request r = text_request(1, 3, 4);
  r.mrope_positions = {0, 1, 1, 0, 1, 2, 0, 2, 1};
  r.mrope_delta = -1;
  s.add_request(std::move(r));
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.position_dims, 3);
  EXPECT_EQ(out.positions, std::vector<int64_t>({0, 1, 1, 0, 1, 2, 0, 2, 1}));
  (void)s.update_from_output(out, {5});
  const SchedulerOutput& next = s.schedule();
  EXPECT_EQ(next.positions, std::vector<int64_t>({2, 2, 2}));
}

}  // namespace
}  // namespace mmcore
