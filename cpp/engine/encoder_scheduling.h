#pragma once
// The multimodal side of scheduling one request's chunk. Items are encoded whole: the chunk
// [start, end) may only overlap an item the request holds in the encoder cache, either already
// cached (acquired: a hit) or encoded in this step (within the step's encoder budget and the
// cache's free + evictable space); otherwise the chunk stops just before that item.
#include <cstdint>
#include <vector>

#include "encoder_cache.h"
#include "request.h"
#include "scheduler_output.h"

namespace mmcore {

// What one request's chunk needs from the encoder; reused across calls (no per-step malloc).
struct EncoderChunkPlan {
  int32_t num_tokens = 0;            // the chunk length once limited by the encoder
  int32_t num_new_embeds = 0;        // encoder budget the chunk uses
  std::vector<int32_t> new_items;    // features to encode this step (first of each identifier)
  std::vector<int32_t> alias_items;  // same identifier as a new item of this chunk
  std::vector<int32_t> hit_items;    // already cached; acquired while planning

  void clear() {
    num_tokens = num_new_embeds = 0;
    new_items.clear();
    alias_items.clear();
    hit_items.clear();
  }
};

// Plans the chunk [start, start + num_tokens) of `request`: acquires cached items, picks the
// items to encode within `encoder_budget_left`, and cuts the chunk before the first item that
// cannot be encoded. Nothing is allocated until commit_encoder_plan.
void plan_encoder_items(Request& request, int32_t start, int32_t num_tokens,
                        int32_t encoder_budget_left, EncoderCacheManager& cache,
                        EncoderChunkPlan& plan);
// The largest chunk end <= `end` that is not strictly inside an item (an item's tokens then all
// fall in one step); may be <= `start` when the chunk starts inside an item that does not fit.
[[nodiscard]] int32_t end_outside_items(const Request& request, int32_t end);
// Undoes the acquisitions of a plan that will not run.
void rollback_encoder_plan(Request& request, const EncoderChunkPlan& plan,
                           EncoderCacheManager& cache);
// Allocates the plan's new items, marks every planned item held and lists the encoder work.
void commit_encoder_plan(Request& request, const EncoderChunkPlan& plan, EncoderCacheManager& cache,
                         SchedulerOutput& out);

// Scatter rows for the chunk [start, end) whose first token is row `dst_row` of the step.
// Only positions whose embed_mask is set take embeddings; src offsets count embeddings.
void append_scatter_plan(const Request& request, int32_t start, int32_t end, int32_t dst_row,
                         SchedulerOutput& out);

// Releases the items whose whole range lies within the first `num_computed_tokens` tokens
// (an identifier is kept while a later item of the request with it is in progress).
void release_done_items(Request& request, int32_t num_computed_tokens, EncoderCacheManager& cache);
// Releases every item (finish, abort, preemption) and forgets what was done.
void release_all_items(Request& request, EncoderCacheManager& cache);

}  // namespace mmcore
