// KV cache groups of the BlockManager (see block_manager.h): freeing the sliding groups' blocks
// that fall out of the window, their prefix-cache lookups and caching, and their invariants.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/block_manager.h"

namespace mmcore {

namespace {

const BlockExtraKeys kNoGroupExtra;

[[noreturn]] void broken(RequestId id, const std::string& what) {
  throw std::logic_error("block manager invariant broken: request " + std::to_string(id) + " " +
                         what);
}

}  // namespace

int32_t BlockManager::num_live_blocks(const Request& request) const {
  const Table* table = table_of(request);
  if (table == nullptr) return 0;
  auto live = static_cast<int32_t>(table->blocks.size());
  for (const std::vector<BlockId>& group : table->groups) {
    live += static_cast<int32_t>(
        std::count_if(group.begin(), group.end(), [](BlockId b) { return b != kNoBlock; }));
  }
  return live;
}

void BlockManager::free_out_of_window(Table& table, int32_t position) {
  for (int32_t g = 1; g < num_groups_; ++g) {
    const int32_t window = windows_[g];
    if (window <= 0) continue;
    std::vector<BlockId>& group = table.groups[g - 1];
    int32_t& first_live = table.group_first_live[g - 1];
    const int32_t end =
        std::min(first_visible_block(position, window), static_cast<int32_t>(group.size()));
    for (; first_live < end; ++first_live) {
      BlockId& block = group[first_live];
      if (block == kNoBlock) continue;
      pool_.release(block);
      block = kNoBlock;
      ++sliding_blocks_freed_;
    }
  }
}

void BlockManager::computed_group_blocks(Request& request, ComputedBlocks& computed) const {
  const int32_t bs = pool_.block_size();
  const auto num_hit = static_cast<int32_t>(computed.blocks.size());
  const bool plain = request.features.empty() && request.cache_salt.empty() && !request.has_mrope();
  constexpr BlockId kUnknown = -2;  // not looked up yet
  computed.group_blocks.assign(static_cast<size_t>(num_groups_ - 1),
                               std::vector<BlockId>(static_cast<size_t>(num_hit), kUnknown));
  // Whether group g has block b cached (looked up once, parent: group 0's block before it).
  auto hit = [&](int32_t g, int32_t b) {
    BlockId& slot = computed.group_blocks[g - 1][b];
    if (slot == kUnknown) {
      const TokenId* tokens = request.token_ids.data() + static_cast<size_t>(b) * bs;
      const BlockHash hash = group_hash(request.block_hashes[b], g);
      const BlockId parent = b == 0 ? kNoBlock : computed.blocks[b - 1];
      std::optional<BlockId> found =
          plain ? pool_.find_cached(hash, tokens, kNoGroupExtra, parent)
                : pool_.find_cached(hash, tokens, block_extra_keys(request, b, bs), parent);
      slot = found ? *found : kNoBlock;
    }
    return slot != kNoBlock;
  };
  // The longest hit every group can serve: a group needs the blocks its next query can see.
  int32_t num_blocks = num_hit;
  bool changed = true;
  while (changed && num_blocks > 0) {
    changed = false;
    for (int32_t g = 1; g < num_groups_ && num_blocks > 0; ++g) {
      const int32_t first = first_visible_block(num_blocks * bs, windows_[g]);
      for (int32_t b = num_blocks - 1; b >= first; --b) {
        if (!hit(g, b)) {
          num_blocks = b;  // a shorter hit whose window excludes block b
          changed = true;
          break;
        }
      }
    }
  }
  computed.blocks.resize(static_cast<size_t>(num_blocks));
  computed.num_tokens = num_blocks * bs;
  for (int32_t g = 1; g < num_groups_; ++g) {
    std::vector<BlockId>& group = computed.group_blocks[g - 1];
    group.resize(static_cast<size_t>(num_blocks));
    const int32_t first = first_visible_block(num_blocks * bs, windows_[g]);
    std::fill(group.begin(), group.begin() + first, kNoBlock);  // not needed: not taken
  }
}

void BlockManager::cache_group_blocks(Request& request, Table& table, int32_t num_full) {
  const int32_t bs = pool_.block_size();
  const bool plain = request.features.empty() && request.cache_salt.empty() && !request.has_mrope();
  for (int32_t g = 1; g < num_groups_; ++g) {
    const std::vector<BlockId>& group = table.groups[g - 1];
    int32_t& next = table.group_next_cache[g - 1];
    for (; next < num_full; ++next) {
      const int32_t b = next;
      if (group[b] == kNoBlock) continue;  // released out of the window before it was cached
      const TokenId* tokens = request.token_ids.data() + static_cast<size_t>(b) * bs;
      if (!plain) fill_block_extra_keys(request, b, bs, scratch_extra_);
      const BlockExtraKeys& extra = plain ? kNoGroupExtra : scratch_extra_;
      // false: another block holds this content already; this one stays uncached.
      (void)pool_.cache(group[b], group_hash(request.block_hashes[b], g), tokens, extra,
                        b == 0 ? kNoBlock : table.blocks[b - 1]);
    }
  }
}

void BlockManager::check_group_invariants(const Table& table, std::vector<int32_t>& refs) const {
  const RequestId id = table.owner;
  if (table.groups.size() != static_cast<size_t>(num_groups_ - 1) ||
      table.group_first_live.size() != table.groups.size()) {
    broken(id, "has " + std::to_string(table.groups.size()) + " group tables for " +
                   std::to_string(num_groups_) + " KV cache groups");
  }
  for (int32_t g = 1; g < num_groups_; ++g) {
    const std::vector<BlockId>& group = table.groups[g - 1];
    const int32_t first_live = table.group_first_live[g - 1];
    if (group.size() != table.blocks.size()) {
      broken(id, "holds " + std::to_string(group.size()) + " entries in group " +
                     std::to_string(g) + " but " + std::to_string(table.blocks.size()) +
                     " in group 0");
    }
    if (windows_[g] <= 0 && first_live != 0) {
      broken(id, "released blocks of full-attention group " + std::to_string(g));
    }
    for (size_t i = 0; i < group.size(); ++i) {
      const BlockId b = group[i];
      if (b == kNoBlock) {
        if (static_cast<int32_t>(i) >= first_live) {
          broken(id, "has no block at entry " + std::to_string(i) + " of group " +
                         std::to_string(g) + " inside its window");
        }
        continue;
      }
      if (b < 0 || b >= pool_.num_blocks()) {
        broken(id,
               "holds out-of-range block " + std::to_string(b) + " in group " + std::to_string(g));
      }
      if (static_cast<int32_t>(i) < first_live) {
        broken(id, "holds block " + std::to_string(b) + " of group " + std::to_string(g) +
                       " that was released out of the window");
      }
      ++refs[b];
    }
  }
}

}  // namespace mmcore
