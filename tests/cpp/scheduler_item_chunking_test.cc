// SchedulerConfig::chunk_inside_mm_items = false: prefill chunks never end inside an item, in
// chunked prefill, in recompute after preemption and with prefix-cache hits; the encoder
// budget still holds; items longer than the token budget are refused at admission.
#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>

#include "engine/scheduler.h"

namespace mmcore {
namespace {

SchedulerConfig no_split_config() {
  SchedulerConfig c;
  c.num_blocks = 64;
  c.block_size = 4;
  c.max_num_batched_tokens = 16;
  c.max_num_seqs = 8;
  c.max_model_len = 128;
  c.encoder_budget = 64;
  c.encoder_cache_size = 64;
  c.chunk_inside_mm_items = false;
  return c;
}

MMFeature item(const std::string& id, int32_t offset, int32_t length) {
  MMFeature f;
  f.identifier = id;
  f.offset = offset;
  f.length = length;
  f.num_embeds = length;
  return f;
}

// 5 text tokens, a 10-token image, 3 text, an 8-token image, 2 text: 28 tokens.
Request two_images(RequestId id, const std::string& first = "a", const std::string& second = "b") {
  Request r;
  r.id = id;
  r.token_ids.resize(28);
  std::iota(r.token_ids.begin(), r.token_ids.end(), 100);
  r.features = {item(first, 5, 10), item(second, 18, 8)};
  r.sampling.max_tokens = 3;
  return r;
}

// The [start, end) of each request's chunk in a step must not cut an item in two.
void expect_no_item_cut(const SchedulerOutput& out, const std::vector<MMFeature>& items) {
  for (int32_t i = 0; i < out.num_reqs(); ++i) {
    const int32_t end = out.seq_lens[i];
    for (const MMFeature& f : items) {
      EXPECT_FALSE(f.offset < end && end < f.offset + f.length)
          << "chunk ends at " << end << " inside item '" << f.identifier << "'";
    }
  }
}

std::vector<int32_t> chunk_ends(Scheduler& s, const std::vector<MMFeature>& items) {
  std::vector<int32_t> ends;
  for (int step = 0; step < 20 && s.num_running() + s.num_waiting() > 0; ++step) {
    const SchedulerOutput& out = s.schedule();
    expect_no_item_cut(out, items);
    s.check_invariants();
    if (out.num_reqs() > 0) ends.push_back(out.seq_lens[0]);
    (void)s.update_from_output(out, std::vector<TokenId>(out.sampling_req_ids.size(), 7));
  }
  return ends;
}

TEST(SchedulerItemChunking, ChunksStopAtItemBoundaries) {
  Scheduler s(no_split_config());
  s.add_request(two_images(1));
  // Budget 16: [0,16) ends between the images, then [16,28) takes image b whole.
  const std::vector<int32_t> ends = chunk_ends(s, two_images(1).features);
  ASSERT_GE(ends.size(), 2u);
  EXPECT_EQ(ends[0], 16);  // 16 is between the items: allowed
  EXPECT_EQ(ends[1], 28);
}

TEST(SchedulerItemChunking, DefaultConfigCutsInsideItems) {
  SchedulerConfig c = no_split_config();
  c.chunk_inside_mm_items = true;
  Scheduler s(c);
  Request r = two_images(1);
  r.features = {item("a", 10, 10)};
  s.add_request(r);
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.seq_lens[0], 16);  // inside [10, 20): the default splits items
}

TEST(SchedulerItemChunking, CutBeforeAnItemThatWouldBeSplit) {
  SchedulerConfig c = no_split_config();
  Scheduler s(c);
  Request r = two_images(1);
  r.features = {item("a", 10, 10)};  // the 16-token budget would end at 16 inside [10, 20)
  s.add_request(r);
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.seq_lens[0], 10);
  (void)s.update_from_output(out, {});
  const SchedulerOutput& second = s.schedule();
  EXPECT_EQ(second.seq_lens[0], 26);  // the image whole, then text up to the budget
  EXPECT_EQ(second.encoder_handles.size(), 1u);
}

TEST(SchedulerItemChunking, ItemLongerThanTheTokenBudgetIsRefused) {
  Scheduler s(no_split_config());
  Request r = two_images(1);
  r.features = {item("a", 2, 20)};
  EXPECT_THROW(s.add_request(r), std::invalid_argument);
  EXPECT_EQ(s.num_waiting(), 0);
}

TEST(SchedulerItemChunking, BusyBudgetWaitsForTheWholeItem) {
  SchedulerConfig c = no_split_config();
  Scheduler s(c);
  Request text;
  text.id = 9;
  text.token_ids.assign(6, 50);
  text.sampling.max_tokens = 4;
  s.add_request(text);
  Request r = two_images(1);
  r.features = {item("a", 0, 12)};
  s.add_request(r);
  // Step 1: the text prompt takes 6 tokens; 10 left < 12 image tokens: the image waits whole.
  const SchedulerOutput& out = s.schedule();
  ASSERT_EQ(out.num_reqs(), 1);
  EXPECT_EQ(out.req_ids[0], 9);
  (void)s.update_from_output(out, {7});
  // Step 2: one decode token + the whole image and text after it up to the budget.
  const SchedulerOutput& second = s.schedule();
  ASSERT_EQ(second.num_reqs(), 2);
  EXPECT_EQ(second.seq_lens[1], 15);
  s.check_invariants();
}

TEST(SchedulerItemChunking, RecomputeAfterPreemptionKeepsItemsWhole) {
  SchedulerConfig c = no_split_config();
  c.num_blocks = 9;  // 36 slots: two 28-token requests cannot both stay
  c.max_num_batched_tokens = 20;
  Scheduler s(c);
  s.add_request(two_images(1, "a", "b"));
  s.add_request(two_images(2, "c", "d"));
  const std::vector<MMFeature> items = two_images(1).features;
  int64_t preemptions = 0;
  for (int step = 0; step < 60 && s.num_running() + s.num_waiting() > 0; ++step) {
    const SchedulerOutput& out = s.schedule();
    expect_no_item_cut(out, items);
    s.check_invariants();
    preemptions += static_cast<int64_t>(out.preempted_req_ids.size());
    (void)s.update_from_output(out, std::vector<TokenId>(out.sampling_req_ids.size(), 7));
  }
  EXPECT_EQ(s.num_running() + s.num_waiting(), 0);
  EXPECT_GT(preemptions, 0);
}

TEST(SchedulerItemChunking, PrefixHitInsideAnItemFinishesTheItemInOneStep) {
  SchedulerConfig c = no_split_config();
  c.max_num_batched_tokens = 32;
  Scheduler s(c);
  s.add_request(two_images(1));
  while (s.num_running() + s.num_waiting() > 0) {
    const SchedulerOutput& out = s.schedule();
    (void)s.update_from_output(out, std::vector<TokenId>(out.sampling_req_ids.size(), 7));
  }
  // Same prompt: cached full blocks end at 24, inside image b [18, 26): the chunk goes on
  // past b's end.
  s.add_request(two_images(2));
  const SchedulerOutput& out = s.schedule();
  ASSERT_EQ(out.num_reqs(), 1);
  EXPECT_GT(out.num_computed_tokens[0], 0);
  EXPECT_EQ(out.seq_lens[0], 28);
  s.check_invariants();
}

}  // namespace
}  // namespace mmcore
