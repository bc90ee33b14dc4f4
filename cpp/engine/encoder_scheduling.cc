#include "engine/encoder_scheduling.h"

#include <algorithm>
#include <stdexcept>

namespace mmcore {

namespace {

// Index of the first feature ending after `start` (features are sorted, non-overlapping).
int32_t first_item_after(const Request& request, int32_t start) {
  auto it =
      std::partition_point(request.features.begin(), request.features.end(),
                           [start](const MMFeature& f) { return f.offset + f.length <= start; });
  return static_cast<int32_t>(it - request.features.begin());
}

bool holds_identifier(const Request& request, const std::string& identifier) {
  for (size_t f = 0; f < request.features.size(); ++f) {
    if (request.item_held[f] && request.features[f].identifier == identifier) return true;
  }
  return false;
}

}  // namespace

void plan_encoder_items(Request& request, int32_t start, int32_t num_tokens,
                        int32_t encoder_budget_left, EncoderCacheManager& cache,
                        EncoderChunkPlan& plan) {
  plan.clear();
  int32_t end = start + num_tokens;
  const auto num_items = static_cast<int32_t>(request.features.size());
  if (num_items == 0 || start >= request.features.back().offset + request.features.back().length) {
    plan.num_tokens = num_tokens;  // past every item (decode): nothing to plan
    return;
  }
  // Invariant after every item: the new items planned so far can all be allocated.
  for (int32_t f = first_item_after(request, start);
       f < num_items && request.features[f].offset < end; ++f) {
    if (request.item_held[f]) continue;
    const MMFeature& item = request.features[f];
    if (cache.lookup(item.identifier)) {
      const bool held_before =
          holds_identifier(request, item.identifier) ||
          std::any_of(plan.hit_items.begin(), plan.hit_items.end(),
                      [&](int32_t g) { return request.features[g].identifier == item.identifier; });
      const int64_t handle = cache.acquire(item.identifier, request.id);
      // Pinning a cached entry can take the evictable space a planned new item counted on.
      if (plan.num_new_embeds > 0 && !cache.can_allocate(plan.num_new_embeds)) {
        if (!held_before) cache.release(item.identifier, request.id);
        end = item.offset;
        break;
      }
      request.item_handles[f] = handle;
      plan.hit_items.push_back(f);
      continue;
    }
    bool alias = false;
    for (int32_t g : plan.new_items) alias |= request.features[g].identifier == item.identifier;
    if (alias) {
      plan.alias_items.push_back(f);
      continue;
    }
    const int32_t total = plan.num_new_embeds + item.num_embeds;
    if (total <= encoder_budget_left && cache.can_allocate(total)) {
      plan.new_items.push_back(f);
      plan.num_new_embeds = total;
      continue;
    }
    end = item.offset;  // cannot encode it this step: stop just before it
    break;
  }
  plan.num_tokens = std::max(0, end - start);
}

int32_t end_outside_items(const Request& request, int32_t end) {
  // The only item that can contain `end` is the first one ending after it.
  const int32_t f = first_item_after(request, end);
  if (f < static_cast<int32_t>(request.features.size()) && request.features[f].offset < end) {
    return request.features[f].offset;
  }
  return end;
}

void rollback_encoder_plan(Request& request, const EncoderChunkPlan& plan,
                           EncoderCacheManager& cache) {
  for (int32_t f : plan.hit_items) {
    const std::string& identifier = request.features[f].identifier;
    if (!holds_identifier(request, identifier))
      cache.release(identifier, request.id);  // idempotent
  }
}

void commit_encoder_plan(Request& request, const EncoderChunkPlan& plan, EncoderCacheManager& cache,
                         SchedulerOutput& out) {
  for (int32_t f : plan.new_items) {
    const MMFeature& item = request.features[f];
    const int64_t handle = cache.allocate(item.identifier, item.num_embeds, request.id);
    request.item_handles[f] = handle;
    request.item_held[f] = 1;
    out.encoder_req_ids.push_back(request.id);
    out.encoder_item_indices.push_back(f);
    out.encoder_handles.push_back(handle);
  }
  for (int32_t f : plan.alias_items) {
    request.item_handles[f] = cache.acquire(request.features[f].identifier, request.id);
    request.item_held[f] = 1;
  }
  for (int32_t f : plan.hit_items) request.item_held[f] = 1;
}

void append_scatter_plan(const Request& request, int32_t start, int32_t end, int32_t dst_row,
                         SchedulerOutput& out) {
  const auto num_items = static_cast<int32_t>(request.features.size());
  if (num_items == 0 || start >= request.features.back().offset + request.features.back().length) {
    return;
  }
  for (int32_t f = first_item_after(request, start);
       f < num_items && request.features[f].offset < end; ++f) {
    const MMFeature& item = request.features[f];
    if (!request.item_held[f]) {
      throw std::logic_error("scheduled tokens of item '" + item.identifier +
                             "' that the request does not hold in the encoder cache");
    }
    const int64_t handle = request.item_handles[f];
    const int32_t s = std::max(start, item.offset);
    const int32_t e = std::min(end, item.offset + item.length);
    auto push = [&](int32_t src, int32_t pos, int32_t len) {
      out.scatter_handles.push_back(handle);
      out.scatter_src_offsets.push_back(src);
      out.scatter_dst_rows.push_back(dst_row + pos - start);
      out.scatter_lens.push_back(len);
    };
    if (item.embed_mask.empty()) {
      push(s - item.offset, s, e - s);
      continue;
    }
    const uint8_t* mask = item.embed_mask.data() - item.offset;  // indexed by absolute position
    int32_t src = 0;
    for (int32_t p = item.offset; p < s; ++p) src += mask[p] != 0;
    for (int32_t p = s; p < e;) {
      if (!mask[p]) {
        ++p;
        continue;
      }
      const int32_t run_start = p;
      while (p < e && mask[p]) ++p;
      push(src, run_start, p - run_start);
      src += p - run_start;
    }
  }
}

void release_done_items(Request& request, int32_t num_computed_tokens, EncoderCacheManager& cache) {
  const auto num_items = static_cast<int32_t>(request.features.size());
  while (request.num_done_items < num_items) {
    const int32_t f = request.num_done_items;
    const MMFeature& item = request.features[f];
    if (item.offset + item.length > num_computed_tokens) break;
    if (request.item_held[f]) {
      request.item_held[f] = 0;
      // A later use of the same image in this request may already hold it (same chunk).
      if (!holds_identifier(request, item.identifier)) cache.release(item.identifier, request.id);
    }
    ++request.num_done_items;
  }
}

void release_all_items(Request& request, EncoderCacheManager& cache) {
  cache.release_all(request.id);
  std::fill(request.item_held.begin(), request.item_held.end(), 0);
  request.num_done_items = 0;
}

}  // namespace mmcore
