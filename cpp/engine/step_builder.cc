#include "engine/step_builder.h"

#include <algorithm>

namespace mmcore {

void StepBuilder::begin(SchedulerOutput& out, int64_t step_id, BlockTableRows& rows) {
  out_ = &out;
  rows_ = &rows;
  out.step_id = step_id;
  // The per-request, per-token and block-table arrays keep their size: finish() resizes and
  // overwrites every element, so only growth pays for initialisation.
  out.position_dims = 1;
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
  out.cross_seq_lens.clear();
  out.cross_block_tables.clear();
  out.max_cross_blocks_per_req = 0;
  out.cross_fill_rows.clear();
  out.cross_fill_handles.clear();
  out.cross_slot_mapping.clear();
  out.num_kv_groups = num_groups_;
  group_tables_.clear();
  chunks_.clear();
  num_tokens_ = 0;
  num_samples_ = 0;
  max_blocks_ = 0;
  has_mrope_ = false;
  max_cross_blocks_ = 0;
  crosses_.clear();
}

void StepBuilder::write_tokens(const Chunk& chunk, TokenId* ids, int64_t* pos,
                               int64_t* slot) const {
  const Request& request = *chunk.request;
  const BlockId* table = chunk.blocks;
  const int32_t start = chunk.start;
  const int32_t end = start + chunk.num_tokens;
  const int32_t known_end = std::max(start, std::min(end, request.num_tokens()));
  ids = std::copy(request.token_ids.begin() + start, request.token_ids.begin() + known_end, ids);
  std::fill(ids, ids + (end - known_end), -1);
  for (int32_t p = start; p < end; ++p) *pos++ = p;
  // Slots block by block: one division per block instead of one per token.
  for (int32_t p = start; p < end;) {
    const int32_t block_index = p / block_size_;
    const int32_t block_end = std::min(end, (block_index + 1) * block_size_);
    const int64_t base_slot =
        static_cast<int64_t>(table[block_index]) * block_size_ - block_index * block_size_;
    for (; p < block_end; ++p) *slot++ = base_slot + p;
  }
}

void StepBuilder::finish() {
  SchedulerOutput& out = *out_;
  const size_t num_reqs = chunks_.size();
  const auto num_tokens = static_cast<size_t>(num_tokens_);
  const auto num_samples = static_cast<size_t>(num_samples_);
  out.req_ids.resize(num_reqs);
  out.num_scheduled_tokens.resize(num_reqs);
  out.num_computed_tokens.resize(num_reqs);
  out.seq_lens.resize(num_reqs);
  out.query_start_loc.resize(num_reqs + 1);
  out.prev_sample_index.resize(num_reqs);
  out.input_ids.resize(num_tokens);
  out.positions.resize(num_tokens);
  out.slot_mapping.resize(num_tokens);
  out.logits_indices.resize(num_samples);
  out.sampling_req_ids.resize(num_samples);
  int32_t row = 0;
  size_t sample = 0;
  out.query_start_loc[0] = 0;
  for (size_t i = 0; i < num_reqs; ++i) {
    const Chunk& c = chunks_[i];
    const RequestId id = c.id;
    out.req_ids[i] = id;
    out.num_scheduled_tokens[i] = c.num_tokens;
    out.num_computed_tokens[i] = c.start;
    out.seq_lens[i] = c.start + c.num_tokens;
    out.prev_sample_index[i] = c.prev_sample_index;
    if (c.num_tokens == 1) {
      // Decode fast path: taken by add_request, no request read here.
      out.input_ids[row] = c.decode_input_id;
      out.positions[row] = c.start;
      out.slot_mapping[row] = c.decode_slot;
    } else {
      write_tokens(c, out.input_ids.data() + row, out.positions.data() + row,
                   out.slot_mapping.data() + row);
    }
    row += c.num_tokens;
    out.query_start_loc[i + 1] = row;
    if (c.samples) {
      out.logits_indices[sample] = row - 1;
      out.sampling_req_ids[sample] = id;
      ++sample;
    }
  }
  // Group rows first: they compare against the epochs write_block_tables replaces.
  if (num_groups_ > 1) write_group_tables();
  write_block_tables();
  if (has_mrope_) write_mrope_positions();
  if (!crosses_.empty()) write_cross_tables();
}

void StepBuilder::write_group_tables() {
  SchedulerOutput& out = *out_;
  BlockTableRows& rows = *rows_;
  const size_t extra = static_cast<size_t>(num_groups_) - 1;
  const size_t num_reqs = chunks_.size();
  const auto width = static_cast<size_t>(max_blocks_);
  const auto num_tokens = static_cast<size_t>(num_tokens_);
  // Rows are laid out request-major, so a request's rows stay put when num_reqs changes; like
  // group 0's, rows of the same table at the same width are completed in place.
  const size_t num_kept = rows.width == max_blocks_ ? std::min(num_reqs, rows.epochs.size()) : 0;
  out.group_block_tables.resize(num_reqs * extra * width);
  out.group_slot_mapping.resize(extra * num_tokens);
  rows.group_lengths.resize(num_reqs * extra);
  rows.group_released.resize(num_reqs * extra);
  for (size_t i = 0; i < num_reqs; ++i) {
    const Chunk& c = chunks_[i];
    const bool same_table = i < num_kept && c.table_epoch != 0 && rows.epochs[i] == c.table_epoch;
    for (size_t g = 0; g < extra; ++g) {
      const size_t k = i * extra + g;
      const GroupTable& t = group_tables_[k];
      BlockId* row = out.group_block_tables.data() + k * width;
      const int32_t written = rows.group_lengths[k];
      const int32_t released = rows.group_released[k];
      if (same_table && written <= c.num_blocks && released <= t.num_released) {
        std::fill(row + released, row + t.num_released, -1);  // released since
        std::copy(t.blocks + std::max(written, t.num_released), t.blocks + c.num_blocks,
                  row + std::max(written, t.num_released));
      } else {
        std::fill(std::copy(t.blocks, t.blocks + c.num_blocks, row), row + width, -1);
      }
      rows.group_lengths[k] = c.num_blocks;
      rows.group_released[k] = t.num_released;
    }
  }
  size_t row = 0;
  for (size_t i = 0; i < num_reqs; ++i) {
    const Chunk& c = chunks_[i];
    for (size_t g = 0; g < extra; ++g) {
      const BlockId* blocks = group_tables_[i * extra + g].blocks;
      int64_t* slot = out.group_slot_mapping.data() + g * num_tokens + row;
      // The chunk's new tokens always lie inside the window: their blocks are held.
      for (int32_t p = c.start; p < c.start + c.num_tokens; ++p) {
        *slot++ = static_cast<int64_t>(blocks[p / block_size_]) * block_size_ + p % block_size_;
      }
    }
    row += static_cast<size_t>(c.num_tokens);
  }
}

void StepBuilder::write_cross_tables() {
  SchedulerOutput& out = *out_;
  const int32_t width = max_cross_blocks_;
  out.max_cross_blocks_per_req = width;
  out.cross_seq_lens.resize(chunks_.size());
  out.cross_block_tables.resize(chunks_.size() * static_cast<size_t>(width));
  std::fill(out.cross_seq_lens.begin(), out.cross_seq_lens.end(), 0);
  std::fill(out.cross_block_tables.begin(), out.cross_block_tables.end(), -1);
  for (const CrossChunk& c : crosses_) {
    out.cross_seq_lens[c.row] = c.len;
    std::copy(c.blocks, c.blocks + c.num_blocks,
              out.cross_block_tables.begin() + static_cast<std::ptrdiff_t>(c.row * width));
  }
}

void StepBuilder::write_block_tables() {
  SchedulerOutput& out = *out_;
  BlockTableRows& rows = *rows_;
  out.max_blocks_per_req = max_blocks_;
  const int32_t width = max_blocks_;
  const size_t num_rows = chunks_.size();
  // Rows left by the last step in this buffer are valid only at the same width.
  const size_t num_kept = rows.width == width ? std::min(num_rows, rows.epochs.size()) : 0;
  out.block_tables.resize(num_rows * static_cast<size_t>(width));
  rows.epochs.resize(num_rows);
  rows.lengths.resize(num_rows);
  rows.width = width;
  BlockId* dst = out.block_tables.data();
  constexpr size_t kAhead = 4;  // rows prefetched ahead: each table is a separate allocation
  for (size_t i = 0; i < num_rows; ++i) {
    const Chunk& c = chunks_[i];
    BlockId* row_end = dst + width;
    const int32_t written = rows.lengths[i];
    if (i < num_kept && c.table_epoch != 0 && rows.epochs[i] == c.table_epoch &&
        written <= c.num_blocks) {
      // Same table, only grown: its first `written` ids and the -1 padding after the new ones
      // are in place.
      std::copy(c.blocks + written, c.blocks + c.num_blocks, dst + written);
    } else {
      // Each row written once: the table, then -1 padding (no fill-then-overwrite pass).
      if (i + kAhead < num_rows) __builtin_prefetch(chunks_[i + kAhead].blocks);
      std::fill(std::copy(c.blocks, c.blocks + c.num_blocks, dst), row_end, -1);
    }
    rows.epochs[i] = c.table_epoch;
    rows.lengths[i] = c.num_blocks;
    dst = row_end;
  }
}

void StepBuilder::write_mrope_positions() {
  SchedulerOutput& out = *out_;
  // 3 rows: text positions repeat in every row; M-RoPE prompt tokens take their own positions.
  const size_t n = out.positions.size();
  out.position_dims = 3;
  out.positions.resize(3 * n);
  std::copy(out.positions.begin(), out.positions.begin() + static_cast<std::ptrdiff_t>(n),
            out.positions.begin() + static_cast<std::ptrdiff_t>(n));
  std::copy(out.positions.begin(), out.positions.begin() + static_cast<std::ptrdiff_t>(n),
            out.positions.begin() + static_cast<std::ptrdiff_t>(2 * n));
  int32_t row = 0;
  for (const Chunk& c : chunks_) {
    const Request& r = *c.request;
    const int32_t start = c.start;
    const int32_t end = start + c.num_tokens;
    if (r.has_mrope()) {
      for (int dim = 0; dim < 3; ++dim) {
        int64_t* dst = out.positions.data() + dim * n + row;
        const int64_t* prompt_pos =
            r.mrope_positions.data() + static_cast<size_t>(dim) * r.num_prompt_tokens;
        for (int32_t p = start; p < end; ++p) {
          *dst++ = p < r.num_prompt_tokens ? prompt_pos[p] : p + r.mrope_delta;
        }
      }
    }
    row += c.num_tokens;
  }
}

}  // namespace mmcore
