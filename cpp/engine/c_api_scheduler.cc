// C API: the scheduler.
#include <string>
#include <vector>

#include "engine/c_api_internal.h"
#include "engine/scheduler.h"

struct mmcore_scheduler {
  explicit mmcore_scheduler(const mmcore::SchedulerConfig& config) : scheduler(config) {}
  mmcore::Scheduler scheduler;
  mmcore::UpdateResult last_update;      // what the last update's result points into
  std::vector<int32_t> finish_statuses;  // last_update.finish_statuses as C values
};

namespace {

using mmcore::capi::Error;
using mmcore::capi::guarded;
using mmcore::capi::HandleKind;
using mmcore::capi::require_array;
using mmcore::capi::require_pointer;

constexpr const char* kTypeName = "mmcore_scheduler";

mmcore_scheduler& checked(const mmcore_scheduler* s) {
  mmcore::capi::check_handle(s, HandleKind::kScheduler, kTypeName);
  return *const_cast<mmcore_scheduler*>(s);
}

mmcore::SchedulerConfig to_config(const mmcore_scheduler_config& c) {
  mmcore::SchedulerConfig config;
  config.num_blocks = c.num_blocks;
  config.block_size = c.block_size;
  config.max_num_batched_tokens = c.max_num_batched_tokens;
  config.max_num_seqs = c.max_num_seqs;
  config.max_model_len = c.max_model_len;
  config.enable_prefix_caching = c.enable_prefix_caching != 0;
  config.enable_chunked_prefill = c.enable_chunked_prefill != 0;
  config.encoder_budget = c.encoder_budget;
  config.encoder_cache_size = c.encoder_cache_size;
  require_array(c.kv_group_windows, c.num_kv_groups, "kv_group_windows");
  if (c.num_kv_groups > 0) {
    config.kv_group_windows.assign(c.kv_group_windows, c.kv_group_windows + c.num_kv_groups);
  }
  return config;
}

mmcore::Request to_request(const mmcore_request& in) {
  require_array(in.token_ids, in.num_tokens, "token_ids");
  require_array(in.eos_token_ids, in.num_eos_token_ids, "eos_token_ids");
  require_array(in.stop_token_ids, in.num_stop_token_ids, "stop_token_ids");
  mmcore::Request r;
  r.id = in.id;
  r.token_ids.assign(in.token_ids, in.token_ids + in.num_tokens);
  r.features = mmcore::capi::to_features(in.features, in.num_features);
  r.sampling.max_tokens = in.max_tokens;
  r.sampling.min_tokens = in.min_tokens;
  r.sampling.ignore_eos = in.ignore_eos != 0;
  r.sampling.eos_token_ids.assign(in.eos_token_ids, in.eos_token_ids + in.num_eos_token_ids);
  r.sampling.stop_token_ids.assign(in.stop_token_ids, in.stop_token_ids + in.num_stop_token_ids);
  r.priority = in.priority;
  if (in.cache_salt != nullptr) r.cache_salt = in.cache_salt;
  if (in.mrope_positions != nullptr) {
    r.mrope_positions.assign(in.mrope_positions,
                             in.mrope_positions + 3 * static_cast<size_t>(in.num_tokens));
    r.mrope_delta = in.mrope_delta;
  }
  return r;
}

template <typename T>
int32_t count(const std::vector<T>& v) {
  return static_cast<int32_t>(v.size());
}

void fill_output(const mmcore::SchedulerOutput& o, mmcore_scheduler_output* out) {
  out->step_id = o.step_id;
  out->num_reqs = o.num_reqs();
  out->num_tokens = o.num_tokens();
  out->max_blocks_per_req = o.max_blocks_per_req;
  out->position_dims = o.position_dims;
  out->req_ids = o.req_ids.data();
  out->num_scheduled_tokens = o.num_scheduled_tokens.data();
  out->num_computed_tokens = o.num_computed_tokens.data();
  out->seq_lens = o.seq_lens.data();
  out->query_start_loc = o.query_start_loc.data();
  out->block_tables = o.block_tables.data();
  out->prev_sample_index = o.prev_sample_index.data();
  out->input_ids = o.input_ids.data();
  out->positions = o.positions.data();
  out->slot_mapping = o.slot_mapping.data();
  out->num_samples = count(o.sampling_req_ids);
  out->logits_indices = o.logits_indices.data();
  out->sampling_req_ids = o.sampling_req_ids.data();
  out->num_encoder_items = count(o.encoder_req_ids);
  out->encoder_req_ids = o.encoder_req_ids.data();
  out->encoder_item_indices = o.encoder_item_indices.data();
  out->encoder_handles = o.encoder_handles.data();
  out->num_scatter = count(o.scatter_handles);
  out->scatter_handles = o.scatter_handles.data();
  out->scatter_src_offsets = o.scatter_src_offsets.data();
  out->scatter_dst_rows = o.scatter_dst_rows.data();
  out->scatter_lens = o.scatter_lens.data();
  out->num_freed_encoder_handles = count(o.freed_encoder_handles);
  out->freed_encoder_handles = o.freed_encoder_handles.data();
  out->num_finished = count(o.finished_req_ids);
  out->finished_req_ids = o.finished_req_ids.data();
  out->num_preempted = count(o.preempted_req_ids);
  out->preempted_req_ids = o.preempted_req_ids.data();
  out->num_kv_groups = o.num_kv_groups;
  out->group_block_tables = o.group_block_tables.data();
  out->group_slot_mapping = o.group_slot_mapping.data();
}

}  // namespace

extern "C" {

void mmcore_scheduler_config_init(mmcore_scheduler_config* config) {
  if (config == nullptr) return;
  const mmcore::SchedulerConfig d;
  config->num_blocks = d.num_blocks;
  config->block_size = d.block_size;
  config->max_num_batched_tokens = d.max_num_batched_tokens;
  config->max_num_seqs = d.max_num_seqs;
  config->max_model_len = d.max_model_len;
  config->enable_prefix_caching = d.enable_prefix_caching ? 1 : 0;
  config->enable_chunked_prefill = d.enable_chunked_prefill ? 1 : 0;
  config->encoder_budget = d.encoder_budget;
  config->encoder_cache_size = d.encoder_cache_size;
  config->kv_group_windows = nullptr;
  config->num_kv_groups = 0;
}

void mmcore_request_init(mmcore_request* request) {
  if (request == nullptr) return;
  *request = mmcore_request{};
  request->max_tokens = mmcore::SamplingLimits{}.max_tokens;
}

mmcore_status mmcore_scheduler_create(const mmcore_scheduler_config* config,
                                      mmcore_scheduler** out) {
  return guarded([&] {
    require_pointer(config, "config");
    require_pointer(out, "out");
    *out = nullptr;
    auto* s = new mmcore_scheduler(to_config(*config));
    mmcore::capi::register_handle(s, HandleKind::kScheduler);
    *out = s;
  });
}

mmcore_status mmcore_scheduler_destroy(mmcore_scheduler* scheduler) {
  if (scheduler == nullptr) return MMCORE_OK;
  return guarded([&] {
    mmcore::capi::unregister_handle(scheduler, HandleKind::kScheduler, kTypeName);
    delete scheduler;
  });
}

mmcore_status mmcore_scheduler_add_request(mmcore_scheduler* scheduler,
                                           const mmcore_request* request) {
  return guarded([&] {
    mmcore_scheduler& s = checked(scheduler);
    require_pointer(request, "request");
    s.scheduler.add_request(to_request(*request));
  });
}

mmcore_status mmcore_scheduler_schedule(mmcore_scheduler* scheduler, mmcore_scheduler_output* out) {
  return guarded([&] {
    mmcore_scheduler& s = checked(scheduler);
    require_pointer(out, "out");
    fill_output(s.scheduler.schedule(), out);
  });
}

mmcore_status mmcore_scheduler_update(mmcore_scheduler* scheduler, int64_t step_id,
                                      const int32_t* sampled, int32_t num_sampled,
                                      mmcore_update_result* result) {
  return guarded([&] {
    mmcore_scheduler& s = checked(scheduler);
    require_array(sampled, num_sampled, "sampled");
    mmcore::UpdateResult r = s.scheduler.update_from_output(step_id, sampled, num_sampled);
    s.last_update = std::move(r);
    s.finish_statuses.assign(s.last_update.finish_statuses.size(), 0);
    for (size_t i = 0; i < s.finish_statuses.size(); ++i) {
      s.finish_statuses[i] = static_cast<int32_t>(s.last_update.finish_statuses[i]);
    }
    if (result != nullptr) {
      result->num_tokens = count(s.last_update.req_ids);
      result->req_ids = s.last_update.req_ids.data();
      result->token_ids = s.last_update.token_ids.data();
      result->num_finished = count(s.last_update.finished_req_ids);
      result->finished_req_ids = s.last_update.finished_req_ids.data();
      result->finish_statuses = s.finish_statuses.data();
    }
  });
}

mmcore_status mmcore_scheduler_finish_request(mmcore_scheduler* scheduler, int64_t request_id,
                                              int32_t status) {
  return guarded([&] {
    mmcore_scheduler& s = checked(scheduler);
    if (status < MMCORE_REQUEST_FINISHED_STOPPED || status > MMCORE_REQUEST_FINISHED_ABORTED) {
      throw Error(MMCORE_ERROR_INVALID_ARGUMENT,
                  "status " + std::to_string(status) +
                      " is not a finished status (MMCORE_REQUEST_FINISHED_*)");
    }
    s.scheduler.finish_request(request_id, static_cast<mmcore::RequestStatus>(status));
  });
}

mmcore_status mmcore_scheduler_get_request(const mmcore_scheduler* scheduler, int64_t request_id,
                                           mmcore_request_info* out) {
  return guarded([&] {
    const mmcore_scheduler& s = checked(scheduler);
    require_pointer(out, "out");
    const mmcore::Request* r = s.scheduler.find_request(request_id);
    if (r == nullptr) {
      throw Error(MMCORE_ERROR_NOT_FOUND,
                  "request " + std::to_string(request_id) + " is not live (unknown or finished)");
    }
    out->status = static_cast<int32_t>(r->status);
    out->num_prompt_tokens = r->num_prompt_tokens;
    out->num_tokens = r->num_tokens();
    out->num_computed_tokens = r->num_computed_tokens;
    out->num_output_tokens = r->num_output_tokens();
    out->token_ids = r->token_ids.data();
  });
}

mmcore_status mmcore_scheduler_has_unfinished(const mmcore_scheduler* scheduler, int32_t* out) {
  return guarded([&] {
    const mmcore_scheduler& s = checked(scheduler);
    require_pointer(out, "out");
    *out = s.scheduler.has_unfinished_requests() ? 1 : 0;
  });
}

mmcore_status mmcore_scheduler_get_stats(const mmcore_scheduler* scheduler,
                                         mmcore_scheduler_stats* out) {
  return guarded([&] {
    const mmcore_scheduler& s = checked(scheduler);
    require_pointer(out, "out");
    const mmcore::SchedulerStats st = s.scheduler.stats();
    out->num_running = st.num_running;
    out->num_waiting = st.num_waiting;
    out->num_steps = st.num_steps;
    out->num_preemptions = st.num_preemptions;
    out->kv_num_blocks = st.kv.num_blocks;
    out->kv_num_used_blocks = st.kv.num_used_blocks;
    out->kv_num_free_blocks = st.kv.num_free_blocks;
    out->kv_num_cached_blocks = st.kv.num_cached_blocks;
    out->kv_prefix_queries = st.kv.prefix_queries;
    out->kv_prefix_hits = st.kv.prefix_hits;
    out->encoder_num_queries = st.encoder.num_queries;
    out->encoder_num_hits = st.encoder.num_hits;
    out->encoder_used_embeds = st.encoder.used_embeds;
    out->encoder_capacity_embeds = st.encoder.capacity_embeds;
    out->encoder_num_entries = st.encoder.num_entries;
    out->encoder_num_referenced_entries = st.encoder.num_referenced_entries;
    out->kv_num_sliding_blocks_freed = st.kv.num_sliding_blocks_freed;
  });
}

mmcore_status mmcore_scheduler_check_invariants(const mmcore_scheduler* scheduler) {
  return guarded([&] {
    const mmcore_scheduler& s = checked(scheduler);
    mmcore::capi::invariants_as_internal([&] { s.scheduler.check_invariants(); });
  });
}

}  // extern "C"
