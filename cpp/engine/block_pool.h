#pragma once
// The physical KV blocks: reference counts, the free queue (LRU order: freed blocks go to the
// tail, allocation takes the head) and the prefix-cache map from chained hash to block. A cached
// block stores its token ids, extra keys and parent (block id + generation) so that a hash hit is
// confirmed by comparing contents: collisions can cost a cache miss, never a wrong KV.
#include <cstdint>
#include <optional>
#include <vector>

#include "block_hash.h"
#include "block_hash_map.h"
#include "types.h"

namespace mmcore {

inline constexpr BlockId kNoBlock = -1;

class BlockPool {
 public:
  BlockPool(int32_t num_blocks, int32_t block_size);

  [[nodiscard]] int32_t num_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  [[nodiscard]] int32_t block_size() const { return block_size_; }
  // Blocks with no reference (cached or not): what allocation can take.
  [[nodiscard]] int32_t num_free() const { return num_free_; }
  [[nodiscard]] int32_t num_cached() const { return hash_to_block_.size(); }
  [[nodiscard]] int32_t ref_count(BlockId block) const { return blocks_[block].ref_count; }
  [[nodiscard]] bool is_cached(BlockId block) const { return blocks_[block].cached; }
  [[nodiscard]] uint32_t generation(BlockId block) const { return blocks_[block].generation; }

  // Takes the head of the free queue, drops its cached content, gives it one reference.
  // Precondition: num_free() > 0.
  [[nodiscard]] BlockId allocate();
  // Adds a reference; a free (cached) block leaves the free queue.
  void add_ref(BlockId block);
  // Drops a reference; at zero the block goes to the tail of the free queue, keeping its content.
  void release(BlockId block);

  // Block cached under `hash` whose stored content equals the given one, if any.
  [[nodiscard]] std::optional<BlockId> find_cached(BlockHash hash, const TokenId* tokens,
                                                   const BlockExtraKeys& extra,
                                                   BlockId parent) const;
  // Records `block` (full, referenced) as holding this content. Returns false (and caches
  // nothing) when another block already holds this hash.
  bool cache(BlockId block, BlockHash hash, const TokenId* tokens, const BlockExtraKeys& extra,
             BlockId parent);

  // Prefetches what cache(block, hash, ..., parent) reads and writes.
  void prefetch_cache(BlockId block, BlockHash hash, BlockId parent) const {
    hash_to_block_.prefetch(hash);
    __builtin_prefetch(&blocks_[block]);
    __builtin_prefetch(&tokens_[static_cast<size_t>(block) * block_size_]);
    if (parent != kNoBlock) __builtin_prefetch(&blocks_[parent]);
  }
  // Throws std::logic_error naming the first broken invariant; `expected_refs[b]` is the number
  // of block tables holding block b.
  void check_invariants(const std::vector<int32_t>& expected_refs) const;

 private:
  struct Block {
    int32_t ref_count = 0;
    BlockId prev_free = kNoBlock;  // free queue links (intrusive doubly linked list)
    BlockId next_free = kNoBlock;
    bool in_free_queue = false;
    bool cached = false;
    bool has_extra = false;   // extras_[block] holds non-empty extra keys
    uint32_t generation = 0;  // bumped whenever cached content is dropped
    BlockHash hash = 0;
    BlockId parent = kNoBlock;
    uint32_t parent_generation = 0;
  };

  void push_free_tail(BlockId block);
  void unlink_free(BlockId block);
  void drop_cached(BlockId block);

  int32_t block_size_;
  std::vector<Block> blocks_;
  std::vector<TokenId> tokens_;  // block_size tokens per block, valid while cached
  // Extra keys live beside the hot per-block state so that Block stays small (cache lines).
  std::vector<BlockExtraKeys> extras_;
  BlockId free_head_ = kNoBlock;
  BlockId free_tail_ = kNoBlock;
  int32_t num_free_ = 0;
  BlockHashMap hash_to_block_;
};

}  // namespace mmcore
