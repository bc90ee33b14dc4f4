#include "engine/cross_attention.h"

namespace mmcore {

EncoderInputPlan plan_encoder_input(Request& request, int32_t start, int32_t encoder_budget_left,
                                    EncoderCacheManager& cache) {
  // Cheapest tests first: a decode step (start > 0) reads nothing past the hot fields.
  if (start != 0 || request.encoder_input_held || !request.is_encoder_decoder()) {
    return EncoderInputPlan::kNotNeeded;
  }
  const MMFeature& input = request.encoder_input;
  if (cache.lookup(input.identifier)) {
    request.encoder_input_handle = cache.acquire(input.identifier, request.id);
    return EncoderInputPlan::kHit;
  }
  if (input.num_embeds <= encoder_budget_left && cache.can_allocate(input.num_embeds)) {
    return EncoderInputPlan::kEncode;
  }
  return EncoderInputPlan::kBlocked;
}

void rollback_encoder_input(Request& request, EncoderInputPlan plan, EncoderCacheManager& cache) {
  if (plan == EncoderInputPlan::kHit) {
    cache.release(request.encoder_input.identifier, request.id);
    request.encoder_input_handle = -1;
  }
}

void commit_encoder_input(Request& request, EncoderInputPlan plan, int32_t row,
                          const std::vector<BlockId>& cross_table, int32_t block_size,
                          EncoderCacheManager& cache, SchedulerOutput& out) {
  if (plan != EncoderInputPlan::kHit && plan != EncoderInputPlan::kEncode) return;
  const MMFeature& input = request.encoder_input;
  if (plan == EncoderInputPlan::kEncode) {
    request.encoder_input_handle = cache.allocate(input.identifier, input.num_embeds, request.id);
    out.encoder_req_ids.push_back(request.id);
    out.encoder_item_indices.push_back(0);
    out.encoder_handles.push_back(request.encoder_input_handle);
  }
  request.encoder_input_held = true;
  out.cross_fill_rows.push_back(row);
  out.cross_fill_handles.push_back(request.encoder_input_handle);
  for (int32_t p = 0; p < input.num_embeds; ++p) {
    out.cross_slot_mapping.push_back(
        static_cast<int64_t>(cross_table[p / block_size]) * block_size + p % block_size);
  }
}

void release_encoder_input(Request& request, EncoderCacheManager& cache) {
  if (!request.encoder_input_held) return;
  cache.release(request.encoder_input.identifier, request.id);
  request.encoder_input_held = false;
  request.encoder_input_handle = -1;
}

}  // namespace mmcore
