#include "engine/scheduler.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/cross_attention.h"
#include "engine/request_prefetch.h"
#include "engine/request_validation.h"
#include "engine/stop_conditions.h"

namespace mmcore {

namespace {

const SchedulerConfig& validated(const SchedulerConfig& config) {
  validate_config(config);
  return config;
}

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config)
    : config_(validated(config)),
      kv_(BlockManagerConfig{config.num_blocks, config.block_size, config.enable_prefix_caching,
                             config.kv_group_windows}),
      encoder_cache_(config.encoder_cache_size),
      builder_(config.block_size, kv_.num_groups()) {
  running_.reserve(static_cast<size_t>(config.max_num_seqs));
}

void Scheduler::add_request(Request request) {
  if (requests_.count(request.id) != 0) {
    throw std::invalid_argument("request " + std::to_string(request.id) + " already exists");
  }
  request.num_prompt_tokens = request.num_tokens();
  validate_request(request, config_);
  prepare_request_items(request);
  request.status = RequestStatus::kWaiting;
  request.num_computed_tokens = 0;
  request.num_pending_tokens = 0;
  request.block_hashes.clear();
  request.arrival_order = next_arrival_++;
  // Room for every token it may generate: no reallocation while decoding.
  request.token_ids.reserve(static_cast<size_t>(std::min<int64_t>(
      static_cast<int64_t>(request.num_prompt_tokens) + request.sampling.max_tokens,
      config_.max_model_len)));
  auto owned = std::make_unique<Request>(std::move(request));
  waiting_.push_new(owned.get());
  requests_.emplace(owned->id, std::move(owned));
}

const SchedulerOutput& Scheduler::schedule() {
  if (in_flight_.size() >= 2) {
    throw std::logic_error(
        "schedule() called while two steps await update_from_output (at most one step may be in "
        "flight)");
  }
  retire_old_requests();
  // Build into a buffer neither in flight nor returned by the previous call.
  StepRecord* last = current_;
  for (StepRecord& candidate : records_) {
    const bool in_flight =
        std::find(in_flight_.begin(), in_flight_.end(), &candidate) != in_flight_.end();
    if (!in_flight && &candidate != last) {
      current_ = &candidate;
      break;
    }
  }
  StepRecord& rec = *current_;
  rec.step_id = next_step_id_++;
  rec.scheduled.clear();
  rec.sampled.clear();
  builder_.begin(rec.out, rec.step_id, rec.rows);
  token_budget_ = config_.max_num_batched_tokens;
  encoder_budget_ = config_.encoder_budget;
  preempted_this_step_ = false;

  schedule_running();
  if (!preempted_this_step_) schedule_waiting();

  builder_.finish();
  rec.out.freed_encoder_handles = encoder_cache_.take_freed();
  rec.out.finished_req_ids.swap(finished_since_last_step_);
  finished_since_last_step_.clear();
  // A step without requests needs no update: it is never in flight.
  if (!rec.scheduled.empty()) in_flight_.push_back(&rec);
  return rec.out;
}

void Scheduler::schedule_running() {
  for (size_t i = 0; i < running_.size() && token_budget_ > 0; ++i) {
    if (i + kPrefetchRequest < running_.size()) prefetch_request(running_[i + kPrefetchRequest]);
    if (i + kPrefetchPointees < running_.size()) {
      const Request& ahead = *running_[i + kPrefetchPointees];
      prefetch_token(ahead, ahead.num_computed_tokens);
      kv_.prefetch_table(ahead);
    }
    if (i + kPrefetchBlock < running_.size())
      kv_.prefetch_last_block(*running_[i + kPrefetchBlock]);
    Request& r = *running_[i];
    const int32_t total = r.num_tokens() + r.num_pending_tokens;
    // The pending sample will finish the request: nothing more to compute for it.
    if (r.num_pending_tokens > 0 &&
        (r.num_output_tokens() + r.num_pending_tokens >= r.sampling.max_tokens ||
         total >= config_.max_model_len)) {
      continue;
    }
    int32_t num_new = total - r.num_computed_tokens;
    if (num_new <= 0 || (!may_chunk(r) && num_new > token_budget_)) continue;
    num_new = std::min(num_new, token_budget_);
    while (try_schedule(r, num_new, ComputedBlocks{}) == Fit::kNoBlocks) {
      // Out of blocks: preempt the newest running request, possibly this one.
      Request* victim = running_.back();
      running_.pop_back();
      preempt(*victim);
      if (victim == &r) break;
    }
  }
}

void Scheduler::schedule_waiting() {
  waiting_.for_each([&](Request* request) {
    if (static_cast<int32_t>(running_.size()) >= config_.max_num_seqs || token_budget_ == 0) {
      return RequestQueue::Visit::kStop;
    }
    Request& r = *request;
    // Preempted this step while its last sample is still in flight: wait for the update.
    if (r.num_pending_tokens > 0) return RequestQueue::Visit::kSkip;
    const ComputedBlocks computed = kv_.get_computed_blocks(r);
    int32_t num_new = r.num_tokens() - computed.num_tokens;
    if (!may_chunk(r) && num_new > token_budget_) return RequestQueue::Visit::kStop;
    num_new = std::min(num_new, token_budget_);
    switch (try_schedule(r, num_new, computed)) {
      case Fit::kNoBlocks:
        return RequestQueue::Visit::kStop;
      case Fit::kNoTokens:
        return RequestQueue::Visit::kSkip;
      case Fit::kScheduled:
        break;
    }
    r.status = RequestStatus::kRunning;
    running_.push_back(&r);
    return RequestQueue::Visit::kTake;
  });
}

Scheduler::Fit Scheduler::try_schedule(Request& r, int32_t num_tokens,
                                       const ComputedBlocks& computed) {
  const int32_t start = r.num_computed_tokens + computed.num_tokens;
  // Decode fast path: a chunk past every multimodal item needs no encoder planning.
  const bool past_items = start >= r.items_end;
  int32_t n = num_tokens;
  if (!past_items && !config_.chunk_inside_mm_items) {
    n = std::max(0, end_outside_items(r, start + num_tokens) - start);
    if (n == 0) return Fit::kNoTokens;
    num_tokens = n;  // a cut at an item boundary is not "less than asked" for may_chunk
  }
  if (!past_items) {
    plan_encoder_items(r, start, n, encoder_budget_, encoder_cache_, plan_);
    n = plan_.num_tokens;
  }
  // Encoder-decoder: the first chunk needs the encoder output (cross-attention K/V).
  const EncoderInputPlan input = plan_encoder_input(r, start, encoder_budget_, encoder_cache_);
  if (input == EncoderInputPlan::kBlocked) n = 0;
  if (n == 0 || (!may_chunk(r) && n < num_tokens)) {
    if (!past_items) rollback_encoder_plan(r, plan_, encoder_cache_);
    rollback_encoder_input(r, input, encoder_cache_);
    return Fit::kNoTokens;
  }
  if (!kv_.allocate_slots(r, n, computed)) {
    if (!past_items) rollback_encoder_plan(r, plan_, encoder_cache_);
    rollback_encoder_input(r, input, encoder_cache_);
    return Fit::kNoBlocks;
  }
  StepRecord& rec = *current_;
  if (!past_items) {
    commit_encoder_plan(r, plan_, encoder_cache_, rec.out);
    encoder_budget_ -= plan_.num_new_embeds;
  }
  const auto batch_row = static_cast<int32_t>(rec.scheduled.size());
  commit_encoder_input(r, input, batch_row, kv_.cross_block_table(r), config_.block_size,
                       encoder_cache_, rec.out);
  if (input == EncoderInputPlan::kEncode) encoder_budget_ -= r.encoder_input.num_embeds;
  token_budget_ -= n;
  const int32_t end = start + n;
  const bool samples = end == r.num_tokens() + r.num_pending_tokens;
  const int32_t row =
      builder_.add_request(r, kv_.block_table(r), kv_.table_epoch(r), start, n, samples);
  if (kv_.num_groups() > 1) {
    for (int32_t g = 1; g < kv_.num_groups(); ++g) {
      builder_.add_group_table(kv_.group_block_table(r, g), kv_.group_num_released(r, g));
    }
  }
  // Holding blocks, a request has cross blocks iff it is encoder-decoder (a hot field).
  if (r.cross_num_blocks > 0) {
    builder_.set_cross(kv_.cross_block_table(r), r.encoder_input.num_embeds);
  }
  if (!past_items) append_scatter_plan(r, start, end, row, rec.out);
  if (samples) {
    r.last_sample_index = static_cast<int32_t>(rec.sampled.size());
    ++r.num_pending_tokens;
    rec.sampled.push_back(&r);
  }
  rec.scheduled.push_back(&r);
  r.num_computed_tokens = end;  // optimistic: the step will compute them
  return Fit::kScheduled;
}

void Scheduler::preempt(Request& r) {
  kv_.free(r);
  release_encoder_input(r, encoder_cache_);
  release_all_items(r, encoder_cache_);
  r.num_computed_tokens = 0;
  r.status = RequestStatus::kPreempted;
  waiting_.push_front_preempted(&r);
  current_->out.preempted_req_ids.push_back(r.id);
  ++num_preemptions_;
  preempted_this_step_ = true;
}

UpdateResult Scheduler::update_from_output(int64_t step_id, const TokenId* sampled,
                                           int32_t num_sampled) {
  UpdateResult result;
  if (in_flight_.empty() || in_flight_.front()->step_id != step_id) {
    const bool in_flight = std::any_of(in_flight_.begin(), in_flight_.end(),
                                       [&](const StepRecord* r) { return r->step_id == step_id; });
    // A step that scheduled nothing was never in flight: its update is a no-op.
    if (!in_flight && step_id >= 0 && step_id < next_step_id_ && num_sampled == 0 &&
        (in_flight_.empty() || step_id > in_flight_.back()->step_id ||
         step_id < in_flight_.front()->step_id)) {
      return result;
    }
    throw std::logic_error("update_from_output for step " + std::to_string(step_id) +
                           ", which is not the oldest step awaiting an update");
  }
  StepRecord& rec = *in_flight_.front();
  if (num_sampled != static_cast<int32_t>(rec.sampled.size())) {
    throw std::invalid_argument("step " + std::to_string(step_id) + " samples " +
                                std::to_string(rec.sampled.size()) + " requests but " +
                                std::to_string(num_sampled) + " tokens were given");
  }
  // One pass over the step's requests (sampled ones are a subsequence of the scheduled, in the
  // same order), so each request is read once; finishing waits until every request's blocks
  // and items are settled, as if in a second pass.
  result.req_ids.reserve(rec.sampled.size());
  result.token_ids.reserve(rec.sampled.size());
  std::vector<Request*>& to_finish = finishing_;
  to_finish.clear();
  caching_.clear();
  size_t j = 0;
  const size_t num_scheduled = rec.scheduled.size();
  for (size_t i = 0; i < num_scheduled; ++i) {
    if (i + kPrefetchRequest < num_scheduled) prefetch_request(rec.scheduled[i + kPrefetchRequest]);
    if (i + kPrefetchPointees < num_scheduled) {
      const Request& ahead = *rec.scheduled[i + kPrefetchPointees];
      prefetch_token(ahead, ahead.num_tokens());
    }
    Request& r = *rec.scheduled[i];
    const bool samples = j < rec.sampled.size() && rec.sampled[j] == &r;
    const TokenId token = samples ? sampled[j] : 0;
    j += samples ? 1 : 0;
    if (is_finished(r.status)) continue;  // finished meanwhile: nothing to cache, token dropped
    // Preempted since: num_computed_tokens is 0 and nothing is cached or released.
    const int32_t done = std::min(rec.out.seq_lens[i], r.num_computed_tokens);
    if (r.num_done_items < static_cast<int32_t>(r.features.size())) {
      release_done_items(r, done, encoder_cache_);
    }
    if (kv_.has_new_full_blocks(r, done)) {
      // Cached after the loop, in this order: the hashing and prefetches overlap the misses.
      const int32_t known = std::min(done, r.num_tokens());
      kv_.prepare_full_blocks(r, known);
      caching_.emplace_back(&r, known);
    }
    // Its cross K/V is written: the encoder output may leave the cache.
    if (r.encoder_input_held && done > 0) release_encoder_input(r, encoder_cache_);
    if (!samples) continue;
    r.token_ids.push_back(token);
    --r.num_pending_tokens;
    result.req_ids.push_back(r.id);
    result.token_ids.push_back(token);
    if (auto stop = check_stop(r, config_.max_model_len)) {
      result.finished_req_ids.push_back(r.id);
      result.finish_statuses.push_back(*stop);
      to_finish.push_back(&r);
    }
  }
  for (const auto& [request, known] : caching_) kv_.cache_full_blocks(*request, known);
  for (size_t k = 0; k < to_finish.size(); ++k) finish(*to_finish[k], result.finish_statuses[k]);
  in_flight_.pop_front();
  retire_old_requests();
  return result;
}

int32_t Scheduler::set_max_num_seqs(int32_t max_num_seqs) {
  config_.max_num_seqs = std::max({max_num_seqs, num_running(), int32_t{1}});
  return config_.max_num_seqs;
}

void Scheduler::finish_request(RequestId id, RequestStatus status) {
  if (!is_finished(status)) {
    throw std::invalid_argument("finish_request needs a finished status");
  }
  auto it = requests_.find(id);
  if (it == requests_.end()) return;
  finish(*it->second, status);
}

void Scheduler::finish(Request& r, RequestStatus status) {
  if (r.status == RequestStatus::kRunning) {
    running_.erase(std::find(running_.begin(), running_.end(), &r));
  } else {
    waiting_.remove(&r);
  }
  r.status = status;
  kv_.free(r);
  release_encoder_input(r, encoder_cache_);
  release_all_items(r, encoder_cache_);
  finished_since_last_step_.push_back(r.id);
  auto it = requests_.find(r.id);
  // Steps up to the last scheduled one may still point at it: keep it until they are updated.
  retired_.emplace_back(next_step_id_ - 1, std::move(it->second));
  requests_.erase(it);
}

void Scheduler::retire_old_requests() {
  while (!retired_.empty() &&
         (in_flight_.empty() || retired_.front().first < in_flight_.front()->step_id)) {
    retired_.pop_front();
  }
}

const Request* Scheduler::find_request(RequestId id) const {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.kv = kv_.stats();
  s.encoder = encoder_cache_.stats();
  s.num_preemptions = num_preemptions_;
  s.num_steps = next_step_id_;
  s.num_running = num_running();
  s.num_waiting = num_waiting();
  return s;
}

}  // namespace mmcore
