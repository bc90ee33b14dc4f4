#pragma once
// Which encoder outputs are cached, keyed by item identifier and shared across requests.
// The runner holds the tensors; this class decides what is kept and hands out stable handles.
// Space is counted in embeddings (encoder output rows). Entries referenced by a request are
// pinned; unreferenced entries stay cached and are evicted least-recently-released first:
//
//   capacity: | referenced (pinned) | unreferenced, LRU -> MRU (evictable) | free |
//
#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "types.h"

namespace mmcore {

struct EncoderCacheStats {
  int64_t num_queries = 0;
  int64_t num_hits = 0;
  int64_t used_embeds = 0;
  int64_t capacity_embeds = 0;
  int32_t num_entries = 0;
  int32_t num_referenced_entries = 0;
};

class EncoderCacheManager {
 public:
  // Throws std::invalid_argument if capacity_embeds < 0.
  explicit EncoderCacheManager(int64_t capacity_embeds);

  // Cached (referenced or not)? Counts a query; a hit if present.
  [[nodiscard]] bool lookup(const std::string& identifier);
  // Cached? Does not touch the statistics.
  [[nodiscard]] bool contains(const std::string& identifier) const;
  [[nodiscard]] std::optional<int64_t> handle(const std::string& identifier) const;
  // Rows of the cached entry, or nullopt if absent.
  [[nodiscard]] std::optional<int32_t> num_embeds(const std::string& identifier) const;
  // Number of requests referencing the entry (0 if absent or unreferenced).
  [[nodiscard]] int32_t num_refs(const std::string& identifier) const;

  // Could a new entry of num_embeds be stored now (free + evictable unreferenced space)?
  [[nodiscard]] bool can_allocate(int32_t num_embeds) const;
  // Store a new entry referenced by `request`; evicts LRU unreferenced entries as needed (their
  // handles are queued for take_freed). Returns the new entry's handle (unique, never reused).
  // Throws std::invalid_argument if the entry exists, num_embeds <= 0 or !can_allocate.
  int64_t allocate(const std::string& identifier, int32_t num_embeds, RequestId request);
  // Add a reference from `request` to an existing entry (idempotent per request); returns the
  // handle. Throws std::invalid_argument if the entry is not cached.
  int64_t acquire(const std::string& identifier, RequestId request);
  // `request` no longer needs the entry (idempotent). Unreferenced entries stay cached (LRU).
  void release(const std::string& identifier, RequestId request);
  // Releases every entry `request` references, in the order it acquired them.
  void release_all(RequestId request);

  // Handles evicted since the last call; the runner drops those tensors.
  [[nodiscard]] std::vector<int64_t> take_freed();

  [[nodiscard]] int64_t capacity_embeds() const { return capacity_embeds_; }
  [[nodiscard]] int64_t used_embeds() const { return used_embeds_; }
  // Space usable by a new entry without evicting anything.
  [[nodiscard]] int64_t free_embeds() const { return capacity_embeds_ - used_embeds_; }
  // Space held by unreferenced entries (reclaimable by eviction).
  [[nodiscard]] int64_t evictable_embeds() const { return evictable_embeds_; }
  [[nodiscard]] EncoderCacheStats stats() const;

  // Throws std::logic_error describing the first broken invariant (space accounting, refcounts).
  void check_invariants() const;

 private:
  struct Entry {
    int64_t handle = 0;
    int32_t num_embeds = 0;
    int32_t num_refs = 0;
    std::list<std::string>::iterator lru_pos;  // valid only while num_refs == 0
  };

  [[nodiscard]] bool request_holds(RequestId request, const std::string& identifier) const;
  void evict_until_free(int64_t num_embeds);
  void unpin(Entry& entry, const std::string& identifier);

  int64_t capacity_embeds_;
  int64_t used_embeds_ = 0;
  int64_t evictable_embeds_ = 0;
  int64_t next_handle_ = 0;
  int64_t num_queries_ = 0;
  int64_t num_hits_ = 0;
  int32_t num_referenced_entries_ = 0;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;  // unreferenced identifiers, least recently released first
  // Identifiers each request references, in acquisition order (a request holds few items).
  std::unordered_map<RequestId, std::vector<std::string>> request_items_;
  std::vector<int64_t> freed_handles_;
};

}  // namespace mmcore
