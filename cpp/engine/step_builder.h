#pragma once
// Writes the per-request and per-token arrays of one SchedulerOutput, request after request,
// then pads the block tables and lays out M-RoPE positions once the step is complete.
#include <cstdint>
#include <vector>

#include "engine/request.h"
#include "engine/scheduler_output.h"

namespace mmcore {

class StepBuilder {
 public:
  explicit StepBuilder(int32_t block_size) : block_size_(block_size) {}

  // Clears `out` (keeping its capacity) and starts step `step_id`.
  void begin(SchedulerOutput& out, int64_t step_id);
  // Adds the chunk [start, start + num_tokens) of `request`; tokens past the known ones are the
  // pending sample of the step in flight (input id -1). `block_table` must outlive finish().
  // Returns the step row of the chunk's first token.
  int32_t add_request(const Request& request, const std::vector<BlockId>& block_table,
                      int32_t start, int32_t num_tokens, bool samples);
  // Pads block tables with -1 and writes 3 x num_tokens positions if any request uses M-RoPE.
  void finish();

 private:
  struct MropeRange {
    const Request* request;
    int32_t row;
    int32_t start;
    int32_t end;
  };

  // Appends input ids, positions and slots of the chunk [start, end) (several tokens).
  void append_tokens(const Request& request, const std::vector<BlockId>& block_table, int32_t start,
                     int32_t end);

  int32_t block_size_;
  SchedulerOutput* out_ = nullptr;
  std::vector<const std::vector<BlockId>*> tables_;
  std::vector<MropeRange> mrope_ranges_;
};

}  // namespace mmcore
