#pragma once
// The encoder side of an encoder-decoder request (Whisper). Its encoder input is encoded once,
// whole, under the step's encoder budget, in the step of the request's first decoder chunk
// (position 0, after admission or preemption). That step also writes the cross-attention K/V
// from the encoder output into the request's cross blocks:
//
//   cross block table:  | enc pos 0 .. bs-1 | bs .. 2bs-1 | ... | (rest of the last block) |
//
// The request holds an encoder-cache reference to its encoder output until that step is updated;
// the runner keeps the output while the entry is cached (another request with the same input,
// or this one after a preemption, hits it).
#include <cstdint>
#include <vector>

#include "encoder_cache.h"
#include "request.h"
#include "scheduler_output.h"

namespace mmcore {

// What the first chunk of an encoder-decoder request needs from the encoder.
enum class EncoderInputPlan : uint8_t {
  kNotNeeded,  // decoder-only, not the first chunk, or already held
  kHit,        // cached: acquired while planning
  kEncode,     // to encode this step (fits the budget and the cache)
  kBlocked,    // cannot run this step
};

// Plans the encoder input for the chunk starting at `start`; a kHit plan holds a reference
// that rollback_encoder_input undoes.
[[nodiscard]] EncoderInputPlan plan_encoder_input(Request& request, int32_t start,
                                                  int32_t encoder_budget_left,
                                                  EncoderCacheManager& cache);
// Undoes a plan that will not run.
void rollback_encoder_input(Request& request, EncoderInputPlan plan, EncoderCacheManager& cache);
// Allocates (kEncode) and marks the input held; lists the encoder work (item index 0 stands for
// the encoder input), the request's cross-attention fill (batch row `row`) and its cross slots.
void commit_encoder_input(Request& request, EncoderInputPlan plan, int32_t row,
                          const std::vector<BlockId>& cross_table, int32_t block_size,
                          EncoderCacheManager& cache, SchedulerOutput& out);
// Drops the request's encoder-cache reference once its cross K/V is written (or it stops).
void release_encoder_input(Request& request, EncoderCacheManager& cache);

}  // namespace mmcore
