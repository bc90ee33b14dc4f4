#include "engine/block_pool.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace mmcore {

namespace {

[[noreturn]] void broken(const std::string& what) {
  throw std::logic_error("block pool invariant broken: " + what);
}

}  // namespace

BlockPool::BlockPool(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size),
      blocks_(static_cast<size_t>(num_blocks)),
      tokens_(static_cast<size_t>(std::max(num_blocks, 0)) *
              static_cast<size_t>(std::max(block_size, 0))),
      extras_(static_cast<size_t>(std::max(num_blocks, 0))),
      hash_to_block_(std::max(num_blocks, 0)) {
  if (num_blocks <= 0) throw std::invalid_argument("num_blocks must be positive");
  if (block_size <= 0) throw std::invalid_argument("block_size must be positive");
  for (BlockId b = 0; b < num_blocks; ++b) push_free_tail(b);
}

void BlockPool::push_free_tail(BlockId block) {
  Block& blk = blocks_[block];
  blk.prev_free = free_tail_;
  blk.next_free = kNoBlock;
  if (free_tail_ != kNoBlock) {
    blocks_[free_tail_].next_free = block;
  } else {
    free_head_ = block;
  }
  free_tail_ = block;
  blk.in_free_queue = true;
  ++num_free_;
}

void BlockPool::unlink_free(BlockId block) {
  Block& blk = blocks_[block];
  if (blk.prev_free != kNoBlock) {
    blocks_[blk.prev_free].next_free = blk.next_free;
  } else {
    free_head_ = blk.next_free;
  }
  if (blk.next_free != kNoBlock) {
    blocks_[blk.next_free].prev_free = blk.prev_free;
  } else {
    free_tail_ = blk.prev_free;
  }
  blk.prev_free = blk.next_free = kNoBlock;
  blk.in_free_queue = false;
  --num_free_;
}

void BlockPool::drop_cached(BlockId block) {
  Block& blk = blocks_[block];
  if (!blk.cached) return;
  hash_to_block_.erase(blk.hash);
  blk.cached = false;
  if (blk.has_extra) {
    // Cleared, not freed: the next content of this block reuses the capacity.
    BlockExtraKeys& extra = extras_[block];
    extra.cache_salt.clear();
    extra.items.clear();
    extra.mrope_positions.clear();
    blk.has_extra = false;
  }
  ++blk.generation;  // children recorded against the old content no longer match
}

BlockId BlockPool::allocate() {
  if (free_head_ == kNoBlock) throw std::logic_error("BlockPool::allocate with no free block");
  const BlockId block = free_head_;
  unlink_free(block);
  drop_cached(block);
  blocks_[block].ref_count = 1;
  return block;
}

void BlockPool::add_ref(BlockId block) {
  Block& blk = blocks_[block];
  if (blk.in_free_queue) unlink_free(block);
  ++blk.ref_count;
}

void BlockPool::release(BlockId block) {
  Block& blk = blocks_[block];
  if (blk.ref_count <= 0) throw std::logic_error("BlockPool::release of an unreferenced block");
  if (--blk.ref_count == 0) push_free_tail(block);
}

std::optional<BlockId> BlockPool::find_cached(BlockHash hash, const TokenId* tokens,
                                              const BlockExtraKeys& extra, BlockId parent) const {
  const BlockId block = hash_to_block_.find(hash);
  if (block < 0) return std::nullopt;
  const Block& blk = blocks_[block];
  if (blk.parent != parent) return std::nullopt;
  if (parent != kNoBlock && blk.parent_generation != blocks_[parent].generation) {
    return std::nullopt;
  }
  const TokenId* stored = tokens_.data() + static_cast<size_t>(block) * block_size_;
  if (!std::equal(stored, stored + block_size_, tokens)) return std::nullopt;
  if (blk.has_extra ? !(extras_[block] == extra) : !extra.empty()) return std::nullopt;
  return block;
}

bool BlockPool::cache(BlockId block, BlockHash hash, const TokenId* tokens,
                      const BlockExtraKeys& extra, BlockId parent) {
  Block& blk = blocks_[block];
  if (blk.cached) return blk.hash == hash;
  if (hash_to_block_.find(hash) >= 0) return false;
  hash_to_block_.insert(hash, block);
  blk.cached = true;
  blk.hash = hash;
  blk.parent = parent;
  blk.parent_generation = parent == kNoBlock ? 0 : blocks_[parent].generation;
  blk.has_extra = !extra.empty();
  if (blk.has_extra) extras_[block] = extra;  // copy assignment reuses capacity
  std::copy(tokens, tokens + block_size_,
            tokens_.begin() + static_cast<std::ptrdiff_t>(block) * block_size_);
  return true;
}

void BlockPool::check_invariants(const std::vector<int32_t>& expected_refs) const {
  const auto n = static_cast<int32_t>(blocks_.size());
  int32_t walked = 0;
  BlockId prev = kNoBlock;
  for (BlockId b = free_head_; b != kNoBlock; b = blocks_[b].next_free) {
    if (b < 0 || b >= n) broken("free queue holds out-of-range block " + std::to_string(b));
    if (++walked > n) broken("free queue has a cycle");
    if (!blocks_[b].in_free_queue)
      broken("block " + std::to_string(b) + " linked but not marked free");
    if (blocks_[b].prev_free != prev) broken("free queue back link of block " + std::to_string(b));
    prev = b;
  }
  if (prev != free_tail_) broken("free queue tail does not match its last block");
  if (walked != num_free_) {
    broken("free queue holds " + std::to_string(walked) + " blocks but num_free is " +
           std::to_string(num_free_));
  }
  for (BlockId b = 0; b < n; ++b) {
    const Block& blk = blocks_[b];
    const std::string name = "block " + std::to_string(b);
    if (blk.ref_count < 0) broken(name + " has a negative reference count");
    if ((blk.ref_count == 0) != blk.in_free_queue) {
      broken(name + (blk.in_free_queue ? " is both free and referenced"
                                       : " is neither free nor referenced (lost)"));
    }
    if (blk.ref_count != expected_refs[b]) {
      broken(name + " has ref count " + std::to_string(blk.ref_count) + " but " +
             std::to_string(expected_refs[b]) + " block tables hold it");
    }
    if (blk.cached && hash_to_block_.find(blk.hash) != b) {
      broken(name + " is cached but the hash map does not point to it");
    }
  }
  int32_t entries = 0;
  hash_to_block_.for_each([&](BlockHash hash, BlockId block) {
    ++entries;
    if (block >= n || !blocks_[block].cached || blocks_[block].hash != hash) {
      broken("hash map entry points to block " + std::to_string(block) +
             " which is not cached under that hash");
    }
  });
  if (entries != hash_to_block_.size()) broken("hash map size does not match its entries");
}

}  // namespace mmcore
