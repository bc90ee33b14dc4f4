// The step's block_tables rows are completed in place when a buffer's row holds the same,
// only grown, table as last time (StepBuilder's BlockTableRows). These tests run long mixed
// workloads (prefix hits, preemption, aborts, finishes, overlapped steps) and check every row of
// every step against the request's blocks: ids where it holds blocks, -1 after, every slot in
// the row's table, and the held prefix unchanged between steps unless it was preempted.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <vector>

#include "engine/scheduler.h"

namespace mmcore {
namespace {

struct RowChecker {
  int32_t block_size;
  std::map<RequestId, std::vector<BlockId>> last_rows;  // per request, its row when last seen

  void check(const Scheduler& s, const SchedulerOutput& out) {
    for (RequestId id : out.preempted_req_ids) last_rows.erase(id);
    for (RequestId id : out.finished_req_ids) last_rows.erase(id);
    const int32_t width = out.max_blocks_per_req;
    ASSERT_EQ(out.block_tables.size(), static_cast<size_t>(out.num_reqs()) * width);
    int32_t widest = 0;
    for (int32_t i = 0; i < out.num_reqs(); ++i) {
      const Request* r = s.find_request(out.req_ids[i]);
      ASSERT_NE(r, nullptr);
      const int32_t held = r->kv_num_blocks;
      widest = std::max(widest, held);
      const BlockId* row = out.block_tables.data() + static_cast<size_t>(i) * width;
      for (int32_t j = 0; j < width; ++j) {
        if (j < held) {
          ASSERT_GE(row[j], 0) << "request " << r->id << " block " << j;
        } else {
          ASSERT_EQ(row[j], -1) << "request " << r->id << " padding " << j;
        }
      }
      for (int32_t t = out.query_start_loc[i]; t < out.query_start_loc[i + 1]; ++t) {
        const int32_t pos = out.num_computed_tokens[i] + (t - out.query_start_loc[i]);
        ASSERT_LT(pos / block_size, held);
        ASSERT_EQ(out.slot_mapping[t],
                  static_cast<int64_t>(row[pos / block_size]) * block_size + pos % block_size);
      }
      std::vector<BlockId> now(row, row + held);
      auto prev = last_rows.find(r->id);
      if (prev != last_rows.end()) {
        ASSERT_LE(prev->second.size(), now.size());
        ASSERT_TRUE(std::equal(prev->second.begin(), prev->second.end(), now.begin()))
            << "request " << r->id << " changed blocks it held";
      }
      last_rows[r->id] = std::move(now);
    }
    ASSERT_EQ(width, widest);
  }
};

Request make_request(RequestId id, std::mt19937& rng) {
  Request r;
  r.id = id;
  // Few distinct prompt heads, so that prefix-cache hits share blocks between requests.
  const auto head = static_cast<TokenId>(rng() % 3);
  const auto len = static_cast<int32_t>(4 + rng() % 40);
  for (int32_t t = 0; t < len; ++t) {
    r.token_ids.push_back(t < 12 ? head * 100 + t : static_cast<TokenId>(rng() % 1000));
  }
  r.sampling.max_tokens = static_cast<int32_t>(1 + rng() % 40);
  r.sampling.ignore_eos = true;
  return r;
}

void run_mixed_workload(bool overlapped, uint32_t seed) {
  SchedulerConfig c;
  c.num_blocks = 48;  // small: requests get preempted and readmitted with new tables
  c.block_size = 4;
  c.max_num_batched_tokens = 48;
  c.max_num_seqs = 8;
  c.max_model_len = 128;
  Scheduler s(c);
  RowChecker checker{c.block_size, {}};
  std::mt19937 rng(seed);
  RequestId next_id = 0;
  int64_t preemptions_seen = 0;
  struct Pending {
    int64_t step_id;
    int32_t num_sampled;
  };
  std::vector<Pending> in_flight;
  for (int step = 0; step < 600; ++step) {
    if (rng() % 3 == 0 && next_id < 200) s.add_request(make_request(next_id++, rng));
    if (rng() % 25 == 0 && next_id > 0) {
      s.finish_request(static_cast<RequestId>(rng() % next_id), RequestStatus::kFinishedAborted);
    }
    const SchedulerOutput& out = s.schedule();
    checker.check(s, out);
    if (::testing::Test::HasFatalFailure()) return;
    preemptions_seen += static_cast<int64_t>(out.preempted_req_ids.size());
    if (out.num_reqs() > 0) {
      in_flight.push_back({out.step_id, static_cast<int32_t>(out.sampling_req_ids.size())});
    }
    // Overlapped: keep one step in flight while the next is scheduled.
    while (in_flight.size() > (overlapped ? 1u : 0u)) {
      const std::vector<TokenId> tokens(static_cast<size_t>(in_flight.front().num_sampled), 7);
      (void)s.update_from_output(in_flight.front().step_id, tokens.data(),
                                 in_flight.front().num_sampled);
      in_flight.erase(in_flight.begin());
    }
    s.check_invariants();
  }
  EXPECT_GT(preemptions_seen, 0) << "the workload should exercise re-admission";
}

TEST(SchedulerBlockTableRows, RowsMatchTheRequestsBlocksEveryStep) {
  for (uint32_t seed : {1u, 2u, 3u}) run_mixed_workload(false, seed);
}

TEST(SchedulerBlockTableRows, RowsMatchTheRequestsBlocksWithOverlappedSteps) {
  for (uint32_t seed : {1u, 2u, 3u}) run_mixed_workload(true, seed);
}

}  // namespace
}  // namespace mmcore
