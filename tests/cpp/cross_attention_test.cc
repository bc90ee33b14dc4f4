// Encoder-decoder requests (Whisper): cross-attention blocks allocated at admission from the
// encoder length, freed at finish / abort / preemption; the encoder input encoded once under
// the encoder budget; the cross fill listed in the first chunk's step.
#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>

#include "engine/scheduler.h"

namespace mmcore {
namespace {

SchedulerConfig config(int32_t num_blocks = 32) {
  SchedulerConfig c;
  c.num_blocks = num_blocks;
  c.block_size = 4;
  c.max_num_batched_tokens = 32;
  c.max_num_seqs = 8;
  c.max_model_len = 64;
  c.encoder_budget = 16;
  c.encoder_cache_size = 32;
  c.enable_prefix_caching = true;
  return c;
}

// A decoder prompt of `len` tokens cross-attending to `encoder_len` positions of `audio`.
Request enc_dec_request(RequestId id, const std::string& audio, int32_t encoder_len,
                        int32_t len = 4, int32_t max_tokens = 3) {
  Request r;
  r.id = id;
  r.token_ids.resize(len);
  std::iota(r.token_ids.begin(), r.token_ids.end(), 10);
  r.sampling.max_tokens = max_tokens;
  r.encoder_input.modality = Modality::kAudio;
  r.encoder_input.identifier = audio;
  r.encoder_input.num_embeds = encoder_len;
  return r;
}

std::vector<TokenId> tokens_for(const SchedulerOutput& out) {
  return std::vector<TokenId>(out.sampling_req_ids.size(), 5);
}

TEST(CrossAttention, AdmissionAllocatesCrossBlocksAndListsTheFill) {
  Scheduler s(config());
  s.add_request(enc_dec_request(1, "clip", 10));  // 10 positions = 3 cross blocks of 4
  const SchedulerOutput& out = s.schedule();
  s.check_invariants();
  ASSERT_EQ(out.num_reqs(), 1);
  EXPECT_EQ(s.stats().kv.num_used_blocks, 1 + 3);  // 4 prompt tokens + cross blocks
  ASSERT_EQ(out.encoder_req_ids.size(), 1u);
  EXPECT_EQ(out.encoder_item_indices[0], 0);
  ASSERT_EQ(out.cross_fill_rows, std::vector<int32_t>{0});
  EXPECT_EQ(out.cross_fill_handles[0], out.encoder_handles[0]);
  ASSERT_EQ(out.cross_seq_lens, std::vector<int32_t>{10});
  ASSERT_EQ(out.max_cross_blocks_per_req, 3);
  ASSERT_EQ(out.cross_slot_mapping.size(), 10u);
  for (int32_t p = 0; p < 10; ++p) {
    EXPECT_EQ(out.cross_slot_mapping[p], out.cross_block_tables[p / 4] * 4 + p % 4);
  }
  // Decode steps read the cross blocks but write nothing into them.
  (void)s.update_from_output(out, tokens_for(out));
  const SchedulerOutput& decode = s.schedule();
  EXPECT_TRUE(decode.cross_fill_rows.empty());
  EXPECT_TRUE(decode.encoder_req_ids.empty());
  EXPECT_EQ(decode.cross_seq_lens, std::vector<int32_t>{10});
  EXPECT_EQ(s.stats().encoder.num_referenced_entries, 0);  // released once the fill ran
  s.check_invariants();
}

TEST(CrossAttention, FinishAndAbortReturnEveryBlock) {
  Scheduler s(config());
  s.add_request(enc_dec_request(1, "a", 9, 4, 2));
  s.add_request(enc_dec_request(2, "b", 5, 4, 10));
  while (s.has_unfinished_requests()) {
    const SchedulerOutput& out = s.schedule();
    s.check_invariants();
    (void)s.update_from_output(out, tokens_for(out));
    if (s.find_request(1) == nullptr && s.find_request(2) != nullptr) {
      s.finish_request(2, RequestStatus::kFinishedAborted);
    }
    s.check_invariants();
  }
  EXPECT_EQ(s.stats().kv.num_free_blocks, 32);
}

TEST(CrossAttention, PreemptionFreesCrossBlocksAndRefillsFromTheCache) {
  // 8 blocks: each request needs 2 cross blocks + 1..3 decoder blocks; the second one is
  // preempted when the first grows.
  SchedulerConfig c = config(8);
  c.encoder_cache_size = 64;
  Scheduler s(c);
  s.add_request(enc_dec_request(1, "a", 8, 4, 8));
  s.add_request(enc_dec_request(2, "b", 8, 4, 8));
  int fills = 0;
  int encodes = 0;
  while (s.has_unfinished_requests()) {
    const SchedulerOutput& out = s.schedule();
    s.check_invariants();
    fills += static_cast<int>(out.cross_fill_rows.size());
    encodes += static_cast<int>(out.encoder_req_ids.size());
    (void)s.update_from_output(out, tokens_for(out));
    s.check_invariants();
  }
  EXPECT_GT(s.stats().num_preemptions, 0);
  EXPECT_GT(fills, 2);    // a preempted request writes its cross K/V again ...
  EXPECT_EQ(encodes, 2);  // ... from the cached encoder output
  EXPECT_EQ(s.stats().kv.num_free_blocks, 8);
}

TEST(CrossAttention, EncoderBudgetLimitsNewInputsPerStep) {
  Scheduler s(config());
  s.add_request(enc_dec_request(1, "a", 12));
  s.add_request(enc_dec_request(2, "b", 12));  // 24 positions > budget 16: the next step
  const SchedulerOutput& first = s.schedule();
  EXPECT_EQ(first.num_reqs(), 1);
  (void)s.update_from_output(first, tokens_for(first));
  const SchedulerOutput& second = s.schedule();
  EXPECT_EQ(second.num_reqs(), 2);
  EXPECT_EQ(second.cross_fill_rows, std::vector<int32_t>{1});
  EXPECT_EQ(second.cross_seq_lens, (std::vector<int32_t>{12, 12}));
  s.check_invariants();
}

TEST(CrossAttention, SameInputIsEncodedOnce) {
  Scheduler s(config());
  s.add_request(enc_dec_request(1, "same", 8));
  s.add_request(enc_dec_request(2, "same", 8));
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.encoder_req_ids.size(), 1u);
  EXPECT_EQ(out.cross_fill_rows, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(out.cross_fill_handles[0], out.cross_fill_handles[1]);
  s.check_invariants();
}

TEST(CrossAttention, RefusesRequestsThatCanNeverRun) {
  Scheduler s(config(4));
  // 4 decoder blocks would fit alone; with 3 cross blocks it never can.
  EXPECT_THROW(s.add_request(enc_dec_request(1, "a", 12, 4, 12)), std::invalid_argument);
  EXPECT_THROW(s.add_request(enc_dec_request(2, "a", 40)), std::invalid_argument);  // > budget
  Request with_items = enc_dec_request(3, "a", 4);
  with_items.features.push_back(MMFeature{Modality::kImage, "img", 0, 1, 1, {}});
  EXPECT_THROW(s.add_request(with_items), std::invalid_argument);
  Request no_id = enc_dec_request(4, "", 4);
  EXPECT_THROW(s.add_request(no_id), std::invalid_argument);
}

TEST(CrossAttention, SkipsThePrefixCache) {
  Scheduler s(config());
  s.add_request(enc_dec_request(1, "a", 4, 12, 1));
  while (s.has_unfinished_requests()) {
    const SchedulerOutput& out = s.schedule();
    (void)s.update_from_output(out, tokens_for(out));
  }
  EXPECT_EQ(s.stats().kv.num_cached_blocks, 0);
  s.add_request(enc_dec_request(2, "b", 4, 12, 1));  // same decoder prompt, other audio
  const SchedulerOutput& out = s.schedule();
  EXPECT_EQ(out.num_computed_tokens[0], 0);
}

}  // namespace
}  // namespace mmcore
