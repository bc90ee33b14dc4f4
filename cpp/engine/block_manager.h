#pragma once
// Per-request block tables on top of the BlockPool: prefix lookup, slot allocation, freeing and
// prefix caching of full blocks. A request's table covers its slots in order:
//
//   | prefix-cache hit | computed | new tokens of this step | (rest of the last block) |
//
// allocate_slots returns std::nullopt when the blocks do not fit; the caller preempts.
//
// An encoder-decoder request (Request::is_encoder_decoder) also gets, when it first gets blocks
// (admission), a cross table covering its encoder positions: the cross-attention K/V written once
// from the encoder output and read by every decoder step. Both tables come from the same pool and
// are freed together (finish, abort, preemption). Such requests skip the prefix cache: their
// decoder KV depends on the encoder input through cross-attention.
//
// KV cache groups (hybrid models, e.g. Gemma 3's sliding-window and global layers): with
// BlockManagerConfig::group_windows of G > 1 entries, a request holds G block tables of equal
// length drawn from the one pool. Group 0 is a full-attention group and holds every block; a
// sliding group (window W) replaces the blocks no future query can see (every token older than
// num_computed_tokens - W + 1) with kNoBlock and releases them, when the request next allocates.
// Blocks of groups > 0 are prefix-cached under their group's hash with the request's group-0
// block before them as parent, so group 0's verified chain vouches for their prefix.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "block_pool.h"
#include "request.h"

namespace mmcore {

struct BlockManagerConfig {
  int32_t num_blocks = 0;
  int32_t block_size = 16;
  bool enable_prefix_caching = true;
  // One entry per KV cache group: -1 full attention, W > 0 a sliding window of W tokens. Empty:
  // one full group (no freeing). Entry 0 must be -1.
  std::vector<int32_t> group_windows;
};

// The longest cached prefix of a request: whole blocks, never the request's last known token.
struct ComputedBlocks {
  std::vector<BlockId> blocks;
  int32_t num_tokens = 0;  // blocks.size() * block_size
  // Groups 1..G-1 (index g - 1): blocks.size() entries each, kNoBlock before the window.
  std::vector<std::vector<BlockId>> group_blocks;
};

struct BlockManagerStats {
  int32_t num_blocks = 0;
  int32_t num_used_blocks = 0;
  int32_t num_free_blocks = 0;
  int32_t num_cached_blocks = 0;
  int64_t prefix_queries = 0;  // tokens looked up when a request first got blocks
  int64_t prefix_hits = 0;     // of those, tokens found in the prefix cache
  int32_t num_kv_groups = 1;
  int64_t num_sliding_blocks_freed = 0;  // sliding-group blocks released out of the window
};

class BlockManager {
 public:
  explicit BlockManager(const BlockManagerConfig& config);

  [[nodiscard]] int32_t block_size() const { return pool_.block_size(); }
  [[nodiscard]] int32_t num_blocks() const { return pool_.num_blocks(); }
  [[nodiscard]] int32_t num_free_blocks() const { return pool_.num_free(); }
  [[nodiscard]] bool prefix_caching_enabled() const { return enable_prefix_caching_; }
  [[nodiscard]] int32_t num_groups() const { return num_groups_; }
  // Window of group g (-1: full attention).
  [[nodiscard]] int32_t group_window(int32_t g) const { return windows_[g]; }

  // Longest cached prefix of `request`'s known tokens (hashes them as needed). Empty when
  // prefix caching is off or the request already holds blocks.
  [[nodiscard]] ComputedBlocks get_computed_blocks(Request& request) const;

  // Could `num_new_tokens` more slots (after num_computed_tokens and the `computed` prefix) be
  // allocated now?
  [[nodiscard]] bool can_allocate(const Request& request, int32_t num_new_tokens,
                                  const ComputedBlocks& computed = {}) const;
  // Takes the `computed` prefix (only for a request holding no blocks) and enough new blocks for
  // num_new_tokens slots after it. Returns the number of new blocks, or std::nullopt (and
  // changes nothing) when they do not fit.
  [[nodiscard]] std::optional<int32_t> allocate_slots(Request& request, int32_t num_new_tokens,
                                                      const ComputedBlocks& computed = {}) {
    // Decode fast path (inline): the last block still has room (no division on this path).
    if (request.kv_table >= 0 && num_new_tokens >= 0 &&
        static_cast<int64_t>(request.num_computed_tokens) + num_new_tokens <=
            static_cast<int64_t>(request.kv_num_blocks) * pool_.block_size()) {
      return 0;
    }
    return allocate_new_slots(request, num_new_tokens, computed);
  }
  // Releases the request's blocks, last block first so that a prefix outlives its tail in the
  // LRU free queue.
  void free(Request& request);
  // Adds the request's full blocks among its first `num_tokens` known tokens to the prefix cache.
  void cache_full_blocks(Request& request, int32_t num_tokens) {
    if (has_new_full_blocks(request, num_tokens)) cache_new_full_blocks(request, num_tokens);
  }
  // Whether cache_full_blocks(request, num_tokens) has work: a block became full since the last
  // call, i.e. min(num_tokens, known tokens) / block_size > cached blocks (no division).
  [[nodiscard]] bool has_new_full_blocks(const Request& request, int32_t num_tokens) const {
    return enable_prefix_caching_ && request.kv_table >= 0 &&
           std::min(num_tokens, request.num_tokens()) >=
               (static_cast<int64_t>(request.kv_num_cached_blocks) + 1) * pool_.block_size();
  }
  // Hashes the blocks cache_full_blocks(request, num_tokens) will cache and prefetches their
  // prefix-cache slots, so that caching many requests' blocks later overlaps the cache misses.
  void prepare_full_blocks(Request& request, int32_t num_tokens);

  // Software prefetch for a decode step of `request` a few requests ahead: first its table, then
  // (once the table is in cache) the block holding its last slot. Hints only; no checks needed.
  void prefetch_table(const Request& request) const {
    if (request.kv_table >= 0 && static_cast<size_t>(request.kv_table) < tables_.size()) {
      __builtin_prefetch(tables_[request.kv_table].get());
    }
  }
  void prefetch_last_block(const Request& request) const {
    if (request.kv_table >= 0 && static_cast<size_t>(request.kv_table) < tables_.size()) {
      const std::vector<BlockId>& blocks = tables_[request.kv_table]->blocks;
      if (!blocks.empty()) __builtin_prefetch(&blocks.back());
    }
  }
  // The request's block ids in order (empty when it holds none).
  [[nodiscard]] const std::vector<BlockId>& block_table(const Request& request) const {
    const Table* table = table_of(request);
    return table == nullptr ? empty_table_ : table->blocks;
  }
  // Changes whenever the request gets a table (admission, re-admission after preemption) and is
  // never 0 for a held one: two reads with the same epoch see one table that only grew between
  // them (blocks are appended, never replaced). 0 when it holds none.
  [[nodiscard]] uint64_t table_epoch(const Request& request) const {
    const Table* table = table_of(request);
    return table == nullptr ? 0 : table->epoch;
  }
  // The block table of group g (1 <= g < num_groups()): kNoBlock entries before the window.
  [[nodiscard]] const std::vector<BlockId>& group_block_table(const Request& request,
                                                              int32_t g) const {
    const Table* table = table_of(request);
    return table == nullptr ? empty_table_ : table->groups[g - 1];
  }
  // Leading kNoBlock entries of group g's table (blocks released out of the window).
  [[nodiscard]] int32_t group_num_released(const Request& request, int32_t g) const {
    const Table* table = table_of(request);
    return table == nullptr ? 0 : table->group_first_live[g - 1];
  }
  // Block ids the request holds in every group (kNoBlock entries not counted; cross excluded).
  [[nodiscard]] int32_t num_live_blocks(const Request& request) const;
  // The request's cross-attention blocks, encoder position p in block p / block_size (empty for a
  // decoder-only request or one holding no blocks).
  [[nodiscard]] const std::vector<BlockId>& cross_block_table(const Request& request) const {
    const Table* table = table_of(request);
    return table == nullptr ? empty_table_ : table->cross_blocks;
  }
  // Cross-attention blocks an encoder-decoder request holds while it runs.
  [[nodiscard]] int32_t num_cross_blocks(const Request& request) const {
    return request.is_encoder_decoder() ? blocks_for(request.encoder_input.num_embeds) : 0;
  }
  // Requests holding a block table.
  [[nodiscard]] int32_t num_requests() const {
    return static_cast<int32_t>(tables_.size() - free_tables_.size());
  }
  [[nodiscard]] BlockManagerStats stats() const;
  // Throws std::logic_error naming the first broken invariant.
  void check_invariants() const;

 private:
  // One cache line holds what a decode step reads (owner, epoch, in_use, the blocks' header).
  struct alignas(64) Table {
    RequestId owner = -1;
    uint64_t epoch = 0;  // see table_epoch()
    bool in_use = false;
    std::vector<BlockId> blocks;        // capacity kept when the table is recycled
    std::vector<BlockId> cross_blocks;  // encoder-decoder: cross-attention K/V blocks
    int32_t num_cross_slots = 0;        // encoder positions the cross blocks cover
    int32_t num_cached_blocks = 0;      // leading blocks registered in the prefix cache
    bool caching_stopped = false;       // a block's hash was taken by another block: stop the chain
    // Groups 1..G-1 (index g - 1): tables as long as `blocks`; entries before
    // group_first_live[g - 1] are kNoBlock; group_next_cache[g - 1]: next block to cache.
    std::vector<std::vector<BlockId>> groups;
    std::vector<int32_t> group_first_live;
    std::vector<int32_t> group_next_cache;
  };

  [[nodiscard]] int32_t blocks_for(int32_t num_slots) const {
    return (num_slots + pool_.block_size() - 1) / pool_.block_size();
  }
  // The request's table (nullptr when it holds none); throws if it points at a foreign one.
  [[nodiscard]] const Table* table_of(const Request& request) const {
    if (request.kv_table < 0) return nullptr;
    const auto index = static_cast<size_t>(request.kv_table);
    if (index >= tables_.size() || !tables_[index]->in_use || tables_[index]->owner != request.id) {
      throw_not_owner(request);
    }
    return tables_[index].get();
  }
  [[noreturn]] static void throw_not_owner(const Request& request);
  // Slow paths of allocate_slots / cache_full_blocks.
  [[nodiscard]] std::optional<int32_t> allocate_new_slots(Request& request, int32_t num_new_tokens,
                                                          const ComputedBlocks& computed);
  void cache_new_full_blocks(Request& request, int32_t num_tokens);
  // KV cache groups (block_manager_groups.cc).
  // First block a query at `position` or later can see in a group of window `window`.
  [[nodiscard]] int32_t first_visible_block(int32_t position, int32_t window) const {
    return window <= 0 ? 0 : std::max(0, position - window + 1) / pool_.block_size();
  }
  // Releases the sliding groups' blocks no query at `position` or later can see.
  void free_out_of_window(Table& table, int32_t position);
  // Prefix hits of groups > 0 for the group-0 hit `computed` (shortened until every group has
  // the blocks its window needs).
  void computed_group_blocks(Request& request, ComputedBlocks& computed) const;
  // Caches groups > 0's full blocks among the first `num_full` (group 0's cached prefix bounds
  // them: their parent is the group-0 block before them).
  void cache_group_blocks(Request& request, Table& table, int32_t num_full);
  void check_group_invariants(const Table& table, std::vector<int32_t>& refs) const;
  [[nodiscard]] BlockHash group_hash(BlockHash hash, int32_t g) const {
    return hash_combine(hash, 0x6b79a38fULL + static_cast<uint64_t>(g));
  }

  BlockPool pool_;
  bool enable_prefix_caching_;
  int32_t num_groups_ = 1;
  std::vector<int32_t> windows_;  // per group, -1: full attention
  int64_t sliding_blocks_freed_ = 0;
  // Tables indexed by Request::kv_table (no hashing on the hot path); free ones are recycled.
  // Heap-allocated once each: references stay valid while other tables are added.
  std::vector<std::unique_ptr<Table>> tables_;
  std::vector<int32_t> free_tables_;
  uint64_t last_epoch_ = 0;  // epoch of the table assigned last
  int64_t prefix_queries_ = 0;
  int64_t prefix_hits_ = 0;
  std::vector<BlockId> empty_table_;  // what block_table returns for a request holding none
  BlockExtraKeys scratch_extra_;      // reused by cache_new_full_blocks (no allocation per block)
};

}  // namespace mmcore
