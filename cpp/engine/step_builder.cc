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
  // block_tables keeps its size: finish() overwrites every element, so growth alone inits.
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
  const int32_t num_known = request.num_tokens();
  out.req_ids.push_back(request.id);
  out.num_scheduled_tokens.push_back(num_tokens);
  out.num_computed_tokens.push_back(start);
  out.seq_lens.push_back(end);
  out.query_start_loc.push_back(row + num_tokens);
  out.prev_sample_index.push_back(end > num_known ? request.last_sample_index : -1);

  if (num_tokens == 1) {
    // Decode fast path: one token, no bulk resize or copy.
    const int32_t block_index = start / block_size_;
    out.input_ids.push_back(start < num_known ? request.token_ids[start] : -1);
    out.positions.push_back(start);
    out.slot_mapping.push_back(static_cast<int64_t>(block_table[block_index]) * block_size_ +
                               (start - block_index * block_size_));
  } else {
    append_tokens(request, block_table, start, end);
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

void StepBuilder::append_tokens(const Request& request, const std::vector<BlockId>& block_table,
                                int32_t start, int32_t end) {
  SchedulerOutput& out = *out_;
  const size_t base = out.input_ids.size();
  const size_t count = static_cast<size_t>(end - start);
  const int32_t known_end = std::min(end, request.num_tokens());
  out.input_ids.insert(out.input_ids.end(), request.token_ids.begin() + start,
                       request.token_ids.begin() + std::max(start, known_end));
  out.input_ids.resize(base + count, -1);
  out.positions.resize(base + count);
  out.slot_mapping.resize(base + count);
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
}

void StepBuilder::finish() {
  SchedulerOutput& out = *out_;
  const int32_t width = out.max_blocks_per_req;
  // Each row written once: the table, then -1 padding (no fill-then-overwrite pass).
  out.block_tables.resize(tables_.size() * static_cast<size_t>(width));
  BlockId* dst = out.block_tables.data();
  for (const std::vector<BlockId>* table : tables_) {
    BlockId* row_end = dst + width;
    dst = std::copy(table->begin(), table->end(), dst);
    std::fill(dst, row_end, -1);
    dst = row_end;
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
