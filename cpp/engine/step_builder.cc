#include "engine/step_builder.h"

#include <algorithm>

namespace mmcore {

void StepBuilder::begin(SchedulerOutput& out, int64_t step_id) {
  out_ = &out;
  out.step_id = step_id;
  out.req_ids.clear();
  out.num_scheduled_tokens.clear();
  out.num_computed_tokens.clear();
  out.seq_lens.clear();
  out.query_start_loc.assign(1, 0);
  out.block_tables.clear();
  out.max_blocks_per_req = 0;
  out.input_ids.clear();
  out.positions.clear();
  out.position_dims = 1;
  out.slot_mapping.clear();
  out.logits_indices.clear();
  out.sampling_req_ids.clear();
  out.prev_sample_index.clear();
  out.encoder_req_ids.clear();
  out.encoder_item_indices.clear();
  out.encoder_handles.clear();
  out.scatter_handles.clear();
  out.scatter_src_offsets.clear();
  out.scatter_dst_rows.clear();
  out.scatter_lens.clear();
  out.freed_encoder_handles.clear();
  out.finished_req_ids.clear();
  out.preempted_req_ids.clear();
  tables_.clear();
  mrope_ranges_.clear();
}

int32_t StepBuilder::add_request(const Request& request, const std::vector<BlockId>& block_table,
                                 int32_t start, int32_t num_tokens, bool samples) {
  SchedulerOutput& out = *out_;
  const int32_t end = start + num_tokens;
  const auto row = static_cast<int32_t>(out.input_ids.size());
  out.req_ids.push_back(request.id);
  out.num_scheduled_tokens.push_back(num_tokens);
  out.num_computed_tokens.push_back(start);
  out.seq_lens.push_back(end);
  out.query_start_loc.push_back(row + num_tokens);

  const int32_t known_end = std::min(end, request.num_tokens());
  out.input_ids.insert(out.input_ids.end(), request.token_ids.begin() + start,
                       request.token_ids.begin() + known_end);
  out.input_ids.resize(static_cast<size_t>(row) + num_tokens, -1);
  out.prev_sample_index.push_back(end > request.num_tokens() ? request.last_sample_index : -1);

  const size_t base = out.positions.size();
  out.positions.resize(base + num_tokens);
  out.slot_mapping.resize(base + num_tokens);
  int64_t* pos = out.positions.data() + base;
  int64_t* slot = out.slot_mapping.data() + base;
  for (int32_t p = start; p < end; ++p) *pos++ = p;
  // Slots block by block: one division per block instead of one per token.
  for (int32_t p = start; p < end;) {
    const int32_t block_index = p / block_size_;
    const int32_t block_end = std::min(end, (block_index + 1) * block_size_);
    const int64_t base_slot =
        static_cast<int64_t>(block_table[block_index]) * block_size_ - block_index * block_size_;
    for (; p < block_end; ++p) *slot++ = base_slot + p;
  }
  if (request.has_mrope()) mrope_ranges_.push_back({&request, row, start, end});

  tables_.push_back(&block_table);
  out.max_blocks_per_req =
      std::max(out.max_blocks_per_req, static_cast<int32_t>(block_table.size()));
  if (samples) {
    out.logits_indices.push_back(row + num_tokens - 1);
    out.sampling_req_ids.push_back(request.id);
  }
  return row;
}

void StepBuilder::finish() {
  SchedulerOutput& out = *out_;
  const int32_t width = out.max_blocks_per_req;
  out.block_tables.assign(tables_.size() * static_cast<size_t>(width), -1);
  for (size_t i = 0; i < tables_.size(); ++i) {
    std::copy(tables_[i]->begin(), tables_[i]->end(), out.block_tables.begin() + i * width);
  }
  if (mrope_ranges_.empty()) return;
  // 3 rows: text positions repeat in every row; M-RoPE prompt tokens take their own positions.
  const size_t n = out.positions.size();
  out.position_dims = 3;
  out.positions.resize(3 * n);
  std::copy(out.positions.begin(), out.positions.begin() + static_cast<std::ptrdiff_t>(n),
            out.positions.begin() + static_cast<std::ptrdiff_t>(n));
  std::copy(out.positions.begin(), out.positions.begin() + static_cast<std::ptrdiff_t>(n),
            out.positions.begin() + static_cast<std::ptrdiff_t>(2 * n));
  for (const MropeRange& range : mrope_ranges_) {
    const Request& r = *range.request;
    for (int dim = 0; dim < 3; ++dim) {
      int64_t* row = out.positions.data() + dim * n + range.row;
      const int64_t* prompt_pos =
          r.mrope_positions.data() + static_cast<size_t>(dim) * r.num_prompt_tokens;
      for (int32_t p = range.start; p < range.end; ++p) {
        *row++ = p < r.num_prompt_tokens ? prompt_pos[p] : p + r.mrope_delta;
      }
    }
  }
}

}  // namespace mmcore
