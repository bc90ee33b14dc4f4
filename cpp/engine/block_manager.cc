#include "engine/block_manager.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace mmcore {

namespace {

const BlockExtraKeys kNoExtra;  // extra keys of a plain request's blocks

}  // namespace

BlockManager::BlockManager(const BlockManagerConfig& config)
    : pool_(config.num_blocks, config.block_size),
      enable_prefix_caching_(config.enable_prefix_caching) {
  windows_ = config.group_windows.empty() ? std::vector<int32_t>{-1} : config.group_windows;
  if (windows_[0] != -1) throw std::invalid_argument("KV cache group 0 must be full attention");
  for (int32_t w : windows_) {
    if (w != -1 && w <= 0) {
      throw std::invalid_argument("a KV cache group's window must be -1 or positive, got " +
                                  std::to_string(w));
    }
  }
  num_groups_ = static_cast<int32_t>(windows_.size());
}

void BlockManager::throw_not_owner(const Request& request) {
  throw std::logic_error("request " + std::to_string(request.id) +
                         " points at a block table it does not own");
}

ComputedBlocks BlockManager::get_computed_blocks(Request& request) const {
  ComputedBlocks computed;
  if (!enable_prefix_caching_ || request.kv_table >= 0 || request.is_encoder_decoder()) {
    return computed;
  }
  const int32_t bs = pool_.block_size();
  extend_block_hashes(request, bs);
  // The last known token is always computed again: its logits are needed.
  const int32_t max_blocks = (request.num_tokens() - 1) / bs;
  const bool plain = request.features.empty() && request.cache_salt.empty() && !request.has_mrope();
  BlockId parent = kNoBlock;
  for (int32_t b = 0; b < max_blocks; ++b) {
    const TokenId* tokens = request.token_ids.data() + static_cast<size_t>(b) * bs;
    std::optional<BlockId> hit =
        plain ? pool_.find_cached(request.block_hashes[b], tokens, kNoExtra, parent)
              : pool_.find_cached(request.block_hashes[b], tokens, block_extra_keys(request, b, bs),
                                  parent);
    if (!hit) break;
    computed.blocks.push_back(*hit);
    parent = *hit;
  }
  computed.num_tokens = static_cast<int32_t>(computed.blocks.size()) * bs;
  if (num_groups_ > 1 && !computed.blocks.empty()) computed_group_blocks(request, computed);
  return computed;
}

bool BlockManager::can_allocate(const Request& request, int32_t num_new_tokens,
                                const ComputedBlocks& computed) const {
  const int32_t held = request.kv_table < 0 ? 0 : request.kv_num_blocks;
  const int32_t prefix_tokens = held == 0 ? computed.num_tokens : 0;
  const int32_t num_prefix = held == 0 ? static_cast<int32_t>(computed.blocks.size()) : 0;
  // Admission of an encoder-decoder request also takes its cross-attention blocks.
  const int32_t cross = request.kv_table < 0 ? num_cross_blocks(request) : 0;
  // Every group's table grows by the same number of entries.
  const int32_t needed =
      num_groups_ * (blocks_for(request.num_computed_tokens + prefix_tokens + num_new_tokens) -
                     held - num_prefix) +
      cross;
  if (needed <= 0) return true;
  // Free prefix blocks leave the free queue when taken, so they do not count as available.
  int32_t prefix_in_free_queue = 0;
  for (int32_t i = 0; i < num_prefix; ++i) {
    if (pool_.ref_count(computed.blocks[i]) == 0) ++prefix_in_free_queue;
  }
  if (held == 0) {
    for (const std::vector<BlockId>& group : computed.group_blocks) {
      for (BlockId b : group) {
        if (b != kNoBlock && pool_.ref_count(b) == 0) ++prefix_in_free_queue;
      }
    }
  }
  return needed <= pool_.num_free() - prefix_in_free_queue;
}

std::optional<int32_t> BlockManager::allocate_new_slots(Request& request, int32_t num_new_tokens,
                                                        const ComputedBlocks& computed) {
  if (num_new_tokens < 0) throw std::invalid_argument("num_new_tokens must be >= 0");
  // Blocks out of every sliding window are released first: the new ones may reuse them.
  if (num_groups_ > 1 && request.kv_table >= 0) {
    free_out_of_window(*tables_[request.kv_table], request.num_computed_tokens);
  }
  if (!can_allocate(request, num_new_tokens, computed)) return std::nullopt;
  const bool inserted = request.kv_table < 0;
  if (inserted) {
    if (free_tables_.empty()) {
      free_tables_.push_back(static_cast<int32_t>(tables_.size()));
      tables_.push_back(std::make_unique<Table>());
    }
    request.kv_table = free_tables_.back();
    free_tables_.pop_back();
    Table& fresh = *tables_[request.kv_table];
    fresh.owner = request.id;
    fresh.in_use = true;
    fresh.num_cached_blocks = 0;
    fresh.caching_stopped = false;
    fresh.epoch = ++last_epoch_;
    if (num_groups_ > 1) {
      fresh.groups.resize(static_cast<size_t>(num_groups_ - 1));
      fresh.group_first_live.assign(static_cast<size_t>(num_groups_ - 1), 0);
      fresh.group_next_cache.assign(static_cast<size_t>(num_groups_ - 1), 0);
    }
  }
  Table& table = *tables_[request.kv_table];
  if (inserted) {
    if (enable_prefix_caching_) {
      prefix_queries_ += request.num_tokens();
      prefix_hits_ += computed.num_tokens;
    }
    for (BlockId block : computed.blocks) {
      pool_.add_ref(block);
      table.blocks.push_back(block);
    }
    table.num_cached_blocks = static_cast<int32_t>(computed.blocks.size());
    request.kv_num_cached_blocks = table.num_cached_blocks;
    for (size_t g = 0; g < computed.group_blocks.size(); ++g) {
      int32_t first_live = 0;
      for (BlockId block : computed.group_blocks[g]) {
        if (block == kNoBlock) {
          ++first_live;
        } else {
          pool_.add_ref(block);
        }
        table.groups[g].push_back(block);
      }
      table.group_first_live[g] = first_live;
      table.group_next_cache[g] = table.num_cached_blocks;
    }
    const int32_t num_cross = num_cross_blocks(request);
    for (int32_t b = 0; b < num_cross; ++b) table.cross_blocks.push_back(pool_.allocate());
    table.num_cross_slots = request.is_encoder_decoder() ? request.encoder_input.num_embeds : 0;
    request.cross_num_blocks = num_cross;
  }
  const int32_t prefix_tokens = inserted ? computed.num_tokens : 0;
  const int32_t target = blocks_for(request.num_computed_tokens + prefix_tokens + num_new_tokens);
  int32_t num_new_blocks = 0;
  while (static_cast<int32_t>(table.blocks.size()) < target) {
    table.blocks.push_back(pool_.allocate());
    for (std::vector<BlockId>& group : table.groups) group.push_back(pool_.allocate());
    num_new_blocks += num_groups_;
  }
  request.kv_num_blocks = static_cast<int32_t>(table.blocks.size());
  return num_new_blocks;
}

void BlockManager::free(Request& request) {
  if (table_of(request) == nullptr) return;
  Table& table = *tables_[request.kv_table];
  for (auto b = table.blocks.rbegin(); b != table.blocks.rend(); ++b) pool_.release(*b);
  for (BlockId b : table.cross_blocks) pool_.release(b);
  for (std::vector<BlockId>& group : table.groups) {
    for (auto b = group.rbegin(); b != group.rend(); ++b) {
      if (*b != kNoBlock) pool_.release(*b);
    }
    group.clear();
  }
  table.blocks.clear();
  table.cross_blocks.clear();
  table.num_cross_slots = 0;
  request.cross_num_blocks = 0;
  table.in_use = false;
  table.owner = -1;
  free_tables_.push_back(request.kv_table);
  request.kv_table = -1;
  request.kv_num_blocks = 0;
  request.kv_num_cached_blocks = 0;
}

void BlockManager::cache_new_full_blocks(Request& request, int32_t num_tokens) {
  const int32_t bs = pool_.block_size();
  (void)table_of(request);  // checks ownership
  Table& table = *tables_[request.kv_table];
  if (table.caching_stopped || request.is_encoder_decoder()) return;
  num_tokens = std::min(num_tokens, request.num_tokens());
  const int32_t num_full = std::min(num_tokens / bs, static_cast<int32_t>(table.blocks.size()));
  if (table.num_cached_blocks >= num_full) return;
  extend_block_hashes(request, bs);
  const bool plain = request.features.empty() && request.cache_salt.empty() && !request.has_mrope();
  for (int32_t b = table.num_cached_blocks; b < num_full; ++b) {
    const BlockId parent = b == 0 ? kNoBlock : table.blocks[b - 1];
    const TokenId* tokens = request.token_ids.data() + static_cast<size_t>(b) * bs;
    if (!plain) fill_block_extra_keys(request, b, bs, scratch_extra_);
    const BlockExtraKeys& extra = plain ? kNoExtra : scratch_extra_;
    if (!pool_.cache(table.blocks[b], request.block_hashes[b], tokens, extra, parent)) {
      table.caching_stopped = true;
      break;
    }
    table.num_cached_blocks = b + 1;
    request.kv_num_cached_blocks = b + 1;
  }
  if (num_groups_ > 1) cache_group_blocks(request, table, table.num_cached_blocks);
}

void BlockManager::prepare_full_blocks(Request& request, int32_t num_tokens) {
  const int32_t bs = pool_.block_size();
  (void)table_of(request);  // checks ownership
  const Table& table = *tables_[request.kv_table];
  if (table.caching_stopped || request.is_encoder_decoder()) return;
  num_tokens = std::min(num_tokens, request.num_tokens());
  const int32_t num_full = std::min(num_tokens / bs, static_cast<int32_t>(table.blocks.size()));
  if (table.num_cached_blocks >= num_full) return;
  extend_block_hashes(request, bs);
  for (int32_t b = table.num_cached_blocks; b < num_full; ++b) {
    pool_.prefetch_cache(table.blocks[b], request.block_hashes[b],
                         b == 0 ? kNoBlock : table.blocks[b - 1]);
  }
}

BlockManagerStats BlockManager::stats() const {
  BlockManagerStats s;
  s.num_blocks = pool_.num_blocks();
  s.num_free_blocks = pool_.num_free();
  s.num_used_blocks = s.num_blocks - s.num_free_blocks;
  s.num_cached_blocks = pool_.num_cached();
  s.prefix_queries = prefix_queries_;
  s.prefix_hits = prefix_hits_;
  s.num_kv_groups = num_groups_;
  s.num_sliding_blocks_freed = sliding_blocks_freed_;
  return s;
}

void BlockManager::check_invariants() const {
  std::vector<int32_t> refs(static_cast<size_t>(pool_.num_blocks()), 0);
  for (const auto& owned : tables_) {
    const Table& table = *owned;
    if (!table.in_use) {
      if (!table.blocks.empty() || !table.cross_blocks.empty() ||
          std::any_of(table.groups.begin(), table.groups.end(),
                      [](const std::vector<BlockId>& g) { return !g.empty(); })) {
        throw std::logic_error("block manager invariant broken: a free block table holds blocks");
      }
      continue;
    }
    const RequestId id = table.owner;
    if (static_cast<int32_t>(table.cross_blocks.size()) != blocks_for(table.num_cross_slots)) {
      throw std::logic_error("block manager invariant broken: request " + std::to_string(id) +
                             " holds " + std::to_string(table.cross_blocks.size()) +
                             " cross-attention blocks for " +
                             std::to_string(table.num_cross_slots) + " encoder positions");
    }
    for (BlockId b : table.cross_blocks) {
      if (b < 0 || b >= pool_.num_blocks() || pool_.is_cached(b)) {
        throw std::logic_error("block manager invariant broken: request " + std::to_string(id) +
                               " holds out-of-range or prefix-cached cross-attention block " +
                               std::to_string(b));
      }
      ++refs[b];
    }
    for (size_t i = 0; i < table.blocks.size(); ++i) {
      const BlockId b = table.blocks[i];
      if (b < 0 || b >= pool_.num_blocks()) {
        throw std::logic_error("block manager invariant broken: request " + std::to_string(id) +
                               " holds out-of-range block " + std::to_string(b));
      }
      ++refs[b];
      if (static_cast<int32_t>(i) < table.num_cached_blocks && !pool_.is_cached(b)) {
        throw std::logic_error("block manager invariant broken: request " + std::to_string(id) +
                               " counts block " + std::to_string(b) +
                               " as cached but the pool does not");
      }
    }
    if (num_groups_ > 1) check_group_invariants(table, refs);
    std::vector<BlockId> sorted = table.blocks;
    sorted.insert(sorted.end(), table.cross_blocks.begin(), table.cross_blocks.end());
    for (const std::vector<BlockId>& group : table.groups) {
      for (BlockId b : group) {
        if (b != kNoBlock) sorted.push_back(b);
      }
    }
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      throw std::logic_error("block manager invariant broken: request " + std::to_string(id) +
                             " holds one block twice");
    }
  }
  pool_.check_invariants(refs);
}

}  // namespace mmcore
