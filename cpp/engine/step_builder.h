#pragma once
// Writes the per-request and per-token arrays of one SchedulerOutput. Chunks are recorded as
// they are scheduled (a few words each); finish() sizes every array once and fills it in one
// pass, pads the block tables and lays out M-RoPE positions.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "request.h"
#include "scheduler_output.h"

namespace mmcore {

// What an output buffer's block_tables rows hold from the last step built into it: the width
// and, per row, the table epoch (BlockManager::table_epoch) and the number of block ids written.
// A row whose table only grew since is completed in place (a decode step appends a block id
// every block_size steps) instead of copied whole.
struct BlockTableRows {
  int32_t width = -1;
  std::vector<uint64_t> epochs;
  std::vector<int32_t> lengths;
  // KV cache groups > 0, row i * (groups - 1) + g - 1: ids written, leading -1 entries written
  // (a sliding group's row also changes where blocks were released: those become -1).
  std::vector<int32_t> group_lengths;
  std::vector<int32_t> group_released;
};

class StepBuilder {
 public:
  explicit StepBuilder(int32_t block_size, int32_t num_groups = 1)
      : block_size_(block_size),
        num_groups_(num_groups),
        block_shift_((block_size & (block_size - 1)) == 0 ? __builtin_ctz(block_size) : -1) {}

  // Clears `out`'s lists (keeping their capacity) and starts step `step_id`. `rows` describes
  // out.block_tables as the last step built into `out` left it (updated by finish()).
  void begin(SchedulerOutput& out, int64_t step_id, BlockTableRows& rows);
  // Adds the chunk [start, start + num_tokens) of `request`; tokens past the known ones are the
  // pending sample of the step in flight (input id -1). `request` (its tokens and
  // last_sample_index as of this call) and `block_table` must not change until finish().
  // `table_epoch` is the table's BlockManager::table_epoch. Returns the step row of the chunk's
  // first token. Inline: called once per scheduled request.
  int32_t add_request(const Request& request, const std::vector<BlockId>& block_table,
                      uint64_t table_epoch, int32_t start, int32_t num_tokens, bool samples) {
    const int32_t row = num_tokens_;
    const int32_t end = start + num_tokens;
    // Written in place (no temporary): this store stream is a large part of a decode step.
    Chunk& c = chunks_.emplace_back();
    c.request = &request;
    c.blocks = block_table.data();
    c.id = request.id;
    c.table_epoch = table_epoch;
    c.num_blocks = static_cast<int32_t>(block_table.size());
    c.start = start;
    c.num_tokens = num_tokens;
    c.prev_sample_index = end > request.num_tokens() ? request.last_sample_index : -1;
    c.samples = samples;
    c.decode_input_id = -1;
    c.decode_slot = 0;
    if (num_tokens == 1) {
      // Decode: everything finish() needs is taken now, while the request is in cache.
      const int32_t block_index = block_shift_ >= 0 ? start >> block_shift_ : start / block_size_;
      c.decode_input_id = start < request.num_tokens() ? request.token_ids[start] : -1;
      c.decode_slot = static_cast<int64_t>(block_table[block_index]) * block_size_ +
                      (start - block_index * block_size_);
    }
    num_tokens_ += num_tokens;
    num_samples_ += samples ? 1 : 0;
    has_mrope_ |= request.has_mrope();
    max_blocks_ = std::max(max_blocks_, c.num_blocks);
    return row;
  }
  // Adds the block table of the next KV cache group (1, 2, ...) of the chunk added last, whose
  // first `num_released` entries are kNoBlock; it must not change until finish(). Hybrid models
  // only (num_groups > 1).
  void add_group_table(const std::vector<BlockId>& group_table, int32_t num_released) {
    group_tables_.push_back({group_table.data(), num_released});
  }
  // Gives the chunk added last the cross-attention blocks of its (encoder-decoder) request;
  // `cross_table` must not change until finish().
  void set_cross(const std::vector<BlockId>& cross_table, int32_t cross_len) {
    const auto num_cross = static_cast<int32_t>(cross_table.size());
    crosses_.push_back({chunks_.size() - 1, cross_table.data(), num_cross, cross_len});
    max_cross_blocks_ = std::max(max_cross_blocks_, num_cross);
  }
  // Writes the arrays of every added chunk, pads block tables with -1 and writes
  // 3 x num_tokens positions if any request uses M-RoPE.
  void finish();

 private:
  // One scheduled chunk, 64 bytes (decode steps write one per running request).
  struct Chunk {
    const Request* request;
    const BlockId* blocks;  // the request's block table (unchanged until finish())
    RequestId id;
    int64_t decode_slot;   // one-token chunks: the slot of their token
    uint64_t table_epoch;  // BlockManager::table_epoch of `blocks`
    int32_t num_blocks;
    int32_t start;
    int32_t num_tokens;
    int32_t prev_sample_index;  // -1 unless the chunk ends with the pending sample
    TokenId decode_input_id;    // one-token chunks: their input id (-1: pending sample)
    bool samples;
  };
  // Cross-attention blocks of an encoder-decoder request's chunk (rare: kept out of Chunk).
  struct CrossChunk {
    size_t row;             // index of its chunk
    const BlockId* blocks;  // unchanged until finish()
    int32_t num_blocks;
    int32_t len;
  };

  // Input ids, positions and slots of one chunk, starting at the given output pointers.
  void write_tokens(const Chunk& chunk, TokenId* ids, int64_t* pos, int64_t* slot) const;
  void write_block_tables();
  void write_mrope_positions();
  void write_cross_tables();
  void write_group_tables();

  int32_t block_size_;
  int32_t num_groups_;   // KV cache groups: each chunk has num_groups_ - 1 group tables
  int32_t block_shift_;  // log2(block_size) for a power of two (a shift, not a division), else -1
  SchedulerOutput* out_ = nullptr;
  BlockTableRows* rows_ = nullptr;
  std::vector<Chunk> chunks_;
  std::vector<CrossChunk> crosses_;  // in row order
  struct GroupTable {
    const BlockId* blocks;  // as long as the chunk's group-0 table
    int32_t num_released;   // leading kNoBlock entries
  };
  std::vector<GroupTable> group_tables_;  // chunk i, group g: [i * (num_groups_ - 1) + g - 1]
  int32_t num_tokens_ = 0;
  int32_t num_samples_ = 0;
  int32_t max_blocks_ = 0;  // widest block table so far: the step's max_blocks_per_req
  bool has_mrope_ = false;
  int32_t max_cross_blocks_ = 0;
};

}  // namespace mmcore
