#pragma once
// The step scheduler: no prefill/decode phases. Each step gives running requests (in order),
// then waiting ones (preempted first, then by priority and arrival), as many tokens as the
// token budget and max_num_seqs allow, with chunked prefill, prefix-cache hits, whole-item
// encoder scheduling and preemption (recompute) of the newest request when blocks run out.
//
// Overlapped scheduling: schedule() may run once more before update_from_output() of the step in
// flight. Decode requests then get input id -1 (the sample not yet on the host) and advance
// optimistically; a request that the late update finishes drops what was scheduled for it.
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "block_manager.h"
#include "encoder_cache.h"
#include "encoder_scheduling.h"
#include "request.h"
#include "request_queue.h"
#include "scheduler_config.h"
#include "scheduler_output.h"
#include "step_builder.h"

namespace mmcore {

// What update_from_output did; rows of req_ids / token_ids are parallel.
struct UpdateResult {
  std::vector<RequestId> req_ids;  // requests that received a token (finished ones drop theirs)
  std::vector<TokenId> token_ids;
  std::vector<RequestId> finished_req_ids;
  std::vector<RequestStatus> finish_statuses;  // kFinishedStopped / kFinishedLength
};

struct SchedulerStats {
  BlockManagerStats kv;
  EncoderCacheStats encoder;
  int64_t num_preemptions = 0;
  int64_t num_steps = 0;
  int32_t num_running = 0;
  int32_t num_waiting = 0;
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);

  // Takes a request with id, token_ids (the expanded prompt), features, sampling, priority,
  // cache_salt and M-RoPE positions filled in. Throws std::invalid_argument when it could never
  // run or its id is live.
  void add_request(Request request);
  // Plans the next step. The returned output stays valid until the second next schedule()
  // (and while its step awaits update_from_output).
  // Throws std::logic_error if two steps already await update_from_output.
  [[nodiscard]] const SchedulerOutput& schedule();
  // Applies the tokens sampled by step `step_id` (one per its sampling_req_ids, in order).
  // Steps must be updated in the order they were scheduled.
  [[nodiscard]] UpdateResult update_from_output(int64_t step_id, const TokenId* sampled,
                                                int32_t num_sampled);
  [[nodiscard]] UpdateResult update_from_output(const SchedulerOutput& out,
                                                const std::vector<TokenId>& sampled) {
    return update_from_output(out.step_id, sampled.data(), static_cast<int32_t>(sampled.size()));
  }
  // Finishes a live request now (status kFinishedAborted / Stopped / Length), freeing its blocks
  // and encoder references; its id is reported in the next step. Unknown ids are ignored.
  void finish_request(RequestId id, RequestStatus status);

  [[nodiscard]] bool has_unfinished_requests() const { return !requests_.empty(); }
  [[nodiscard]] int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  [[nodiscard]] int32_t num_waiting() const { return waiting_.size(); }
  [[nodiscard]] const Request* find_request(RequestId id) const;
  [[nodiscard]] SchedulerStats stats() const;
  // The block manager (read-only: tests compare the step's tables with it).
  [[nodiscard]] const BlockManager& block_manager() const { return kv_; }
  [[nodiscard]] const SchedulerConfig& config() const { return config_; }
  // Sets the most running requests from the next step on (after an out-of-memory step), never
  // below 1 or the number running now. Returns the limit in force.
  int32_t set_max_num_seqs(int32_t max_num_seqs);
  // Throws std::logic_error naming the first broken invariant of the scheduler, block manager
  // or encoder cache.
  void check_invariants() const;

 private:
  struct StepRecord {
    int64_t step_id = -1;
    std::vector<Request*> scheduled;  // batch order, parallel to out.req_ids
    std::vector<Request*> sampled;    // parallel to out.sampling_req_ids
    SchedulerOutput out;
    BlockTableRows rows;  // what out.block_tables holds from the last step built into it
  };

  // Tries to schedule up to num_tokens of `request` from its num_computed_tokens (after the
  // `computed` prefix hit for a waiting request). Returns false when blocks do not fit.
  enum class Fit { kScheduled, kNoTokens, kNoBlocks };
  Fit try_schedule(Request& request, int32_t num_tokens, const ComputedBlocks& computed);
  // Chunked prefill, or a request (preempted, then recomputed) whose tokens exceed the token
  // budget: without chunking it could never run again.
  [[nodiscard]] bool may_chunk(const Request& r) const {
    return config_.enable_chunked_prefill || r.num_tokens() > config_.max_num_batched_tokens;
  }
  void schedule_running();
  void schedule_waiting();
  void preempt(Request& request);
  void finish(Request& request, RequestStatus status);
  void retire_old_requests();
  // check_invariants of one running request's KV group tables (hybrid models).
  void check_group_tables(const Request& r, const std::string& name) const;

  SchedulerConfig config_;
  BlockManager kv_;
  EncoderCacheManager encoder_cache_;
  StepBuilder builder_;
  EncoderChunkPlan plan_;

  std::unordered_map<RequestId, std::unique_ptr<Request>> requests_;  // live requests
  std::vector<Request*> running_;  // admission order; the back is the newest
  RequestQueue waiting_;
  // Finished requests kept alive while a step in flight may still point at them.
  std::deque<std::pair<int64_t, std::unique_ptr<Request>>> retired_;
  std::vector<RequestId> finished_since_last_step_;
  std::vector<Request*> finishing_;  // update_from_output's requests to finish (reused)
  // update_from_output's requests with newly full blocks and their known computed tokens (reused).
  std::vector<std::pair<Request*, int32_t>> caching_;

  // Output buffers, reused: the step in flight, the last returned step and the one being built.
  StepRecord records_[3];
  StepRecord* current_ = nullptr;
  std::deque<StepRecord*> in_flight_;  // scheduled, non-empty, not yet updated; oldest first
  int64_t next_step_id_ = 0;
  int64_t next_arrival_ = 0;
  int32_t token_budget_ = 0;
  int32_t encoder_budget_ = 0;
  bool preempted_this_step_ = false;
  int64_t num_preemptions_ = 0;
};

}  // namespace mmcore
