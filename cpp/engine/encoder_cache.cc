#include "engine/encoder_cache.h"

#include <algorithm>
#include <stdexcept>
#include <unordered_set>

namespace mmcore {

EncoderCacheManager::EncoderCacheManager(int64_t capacity_embeds)
    : capacity_embeds_(capacity_embeds) {
  if (capacity_embeds < 0) {
    throw std::invalid_argument("encoder cache capacity must be >= 0 embeddings, got " +
                                std::to_string(capacity_embeds));
  }
}

bool EncoderCacheManager::lookup(const std::string& identifier) {
  ++num_queries_;
  const bool hit = contains(identifier);
  if (hit) ++num_hits_;
  return hit;
}

bool EncoderCacheManager::contains(const std::string& identifier) const {
  return entries_.count(identifier) != 0;
}

std::optional<int64_t> EncoderCacheManager::handle(const std::string& identifier) const {
  auto it = entries_.find(identifier);
  if (it == entries_.end()) return std::nullopt;
  return it->second.handle;
}

std::optional<int32_t> EncoderCacheManager::num_embeds(const std::string& identifier) const {
  auto it = entries_.find(identifier);
  if (it == entries_.end()) return std::nullopt;
  return it->second.num_embeds;
}

int32_t EncoderCacheManager::num_refs(const std::string& identifier) const {
  auto it = entries_.find(identifier);
  return it == entries_.end() ? 0 : it->second.num_refs;
}

bool EncoderCacheManager::can_allocate(int32_t num_embeds) const {
  return num_embeds > 0 && num_embeds <= free_embeds() + evictable_embeds_;
}

int64_t EncoderCacheManager::allocate(const std::string& identifier, int32_t num_embeds,
                                      RequestId request) {
  if (contains(identifier)) {
    throw std::invalid_argument("encoder cache already holds item '" + identifier +
                                "'; acquire it instead of allocating");
  }
  if (num_embeds <= 0) {
    throw std::invalid_argument("encoder cache entry '" + identifier +
                                "' must have at least 1 embedding, got " +
                                std::to_string(num_embeds));
  }
  if (!can_allocate(num_embeds)) {
    throw std::invalid_argument(
        "encoder cache cannot fit item '" + identifier + "' of " + std::to_string(num_embeds) +
        " embeddings: " + std::to_string(free_embeds()) + " free + " +
        std::to_string(evictable_embeds_) + " evictable of " + std::to_string(capacity_embeds_));
  }
  evict_until_free(num_embeds);
  Entry entry;
  entry.handle = next_handle_++;
  entry.num_embeds = num_embeds;
  entry.num_refs = 1;
  entries_.emplace(identifier, entry);
  used_embeds_ += num_embeds;
  ++num_referenced_entries_;
  request_items_[request].push_back(identifier);
  return entry.handle;
}

int64_t EncoderCacheManager::acquire(const std::string& identifier, RequestId request) {
  auto it = entries_.find(identifier);
  if (it == entries_.end()) {
    throw std::invalid_argument("encoder cache does not hold item '" + identifier +
                                "'; allocate it first");
  }
  Entry& entry = it->second;
  if (request_holds(request, identifier)) return entry.handle;
  if (entry.num_refs == 0) {
    // Pinned again: no longer evictable.
    lru_.erase(entry.lru_pos);
    evictable_embeds_ -= entry.num_embeds;
    ++num_referenced_entries_;
  }
  ++entry.num_refs;
  request_items_[request].push_back(identifier);
  return entry.handle;
}

void EncoderCacheManager::release(const std::string& identifier, RequestId request) {
  auto req_it = request_items_.find(request);
  if (req_it == request_items_.end()) return;
  auto& items = req_it->second;
  auto pos = std::find(items.begin(), items.end(), identifier);
  if (pos == items.end()) return;
  items.erase(pos);
  if (items.empty()) request_items_.erase(req_it);
  unpin(entries_.at(identifier), identifier);
}

void EncoderCacheManager::release_all(RequestId request) {
  auto req_it = request_items_.find(request);
  if (req_it == request_items_.end()) return;
  const std::vector<std::string> items = std::move(req_it->second);
  request_items_.erase(req_it);
  for (const auto& identifier : items) unpin(entries_.at(identifier), identifier);
}

std::vector<int64_t> EncoderCacheManager::take_freed() {
  std::vector<int64_t> freed;
  freed.swap(freed_handles_);
  return freed;
}

EncoderCacheStats EncoderCacheManager::stats() const {
  EncoderCacheStats s;
  s.num_queries = num_queries_;
  s.num_hits = num_hits_;
  s.used_embeds = used_embeds_;
  s.capacity_embeds = capacity_embeds_;
  s.num_entries = static_cast<int32_t>(entries_.size());
  s.num_referenced_entries = num_referenced_entries_;
  return s;
}

bool EncoderCacheManager::request_holds(RequestId request, const std::string& identifier) const {
  auto it = request_items_.find(request);
  if (it == request_items_.end()) return false;
  return std::find(it->second.begin(), it->second.end(), identifier) != it->second.end();
}

void EncoderCacheManager::evict_until_free(int64_t num_embeds) {
  while (free_embeds() < num_embeds) {
    // can_allocate guarantees enough evictable space, so the LRU list is not empty here.
    const std::string victim = lru_.front();
    lru_.pop_front();
    auto it = entries_.find(victim);
    used_embeds_ -= it->second.num_embeds;
    evictable_embeds_ -= it->second.num_embeds;
    freed_handles_.push_back(it->second.handle);
    entries_.erase(it);
  }
}

void EncoderCacheManager::unpin(Entry& entry, const std::string& identifier) {
  if (--entry.num_refs > 0) return;
  // Most recently released goes last: evicted after everything released before it.
  entry.lru_pos = lru_.insert(lru_.end(), identifier);
  evictable_embeds_ += entry.num_embeds;
  --num_referenced_entries_;
}

void EncoderCacheManager::check_invariants() const {
  auto fail = [](const std::string& what) {
    throw std::logic_error("encoder cache invariant broken: " + what);
  };
  std::unordered_map<std::string, int32_t> refs_from_requests;
  for (const auto& [request, items] : request_items_) {
    if (items.empty()) fail("request " + std::to_string(request) + " has an empty item list");
    std::unordered_set<std::string> seen;
    for (const auto& identifier : items) {
      if (!seen.insert(identifier).second) {
        fail("request " + std::to_string(request) + " references '" + identifier + "' twice");
      }
      if (!contains(identifier)) {
        fail("request " + std::to_string(request) + " references evicted item '" + identifier +
             "'");
      }
      ++refs_from_requests[identifier];
    }
  }
  int64_t used = 0, evictable = 0;
  int32_t referenced = 0;
  std::unordered_set<int64_t> handles;
  for (const auto& [identifier, entry] : entries_) {
    used += entry.num_embeds;
    if (entry.num_embeds <= 0) fail("entry '" + identifier + "' has no embeddings");
    if (entry.handle < 0 || entry.handle >= next_handle_) {
      fail("entry '" + identifier + "' has a handle never handed out");
    }
    if (!handles.insert(entry.handle).second) fail("handle reused by '" + identifier + "'");
    auto ref_it = refs_from_requests.find(identifier);
    const int32_t expected_refs = ref_it == refs_from_requests.end() ? 0 : ref_it->second;
    if (entry.num_refs != expected_refs) {
      fail("entry '" + identifier + "' counts " + std::to_string(entry.num_refs) +
           " refs but requests hold " + std::to_string(expected_refs));
    }
    if (entry.num_refs > 0) {
      ++referenced;
    } else {
      evictable += entry.num_embeds;
      if (*entry.lru_pos != identifier) fail("entry '" + identifier + "' LRU position is stale");
    }
  }
  if (used != used_embeds_) {
    fail("used space " + std::to_string(used_embeds_) + " != sum of entries " +
         std::to_string(used));
  }
  if (used_embeds_ > capacity_embeds_) {
    fail("used space " + std::to_string(used_embeds_) + " exceeds capacity " +
         std::to_string(capacity_embeds_));
  }
  if (evictable != evictable_embeds_) {
    fail("evictable space " + std::to_string(evictable_embeds_) +
         " != sum of unreferenced entries " + std::to_string(evictable));
  }
  if (referenced != num_referenced_entries_) fail("referenced entry count is stale");
  if (lru_.size() != entries_.size() - static_cast<size_t>(referenced)) {
    fail("LRU list holds " + std::to_string(lru_.size()) + " items but " +
         std::to_string(entries_.size() - referenced) + " entries are unreferenced");
  }
  for (const auto& identifier : lru_) {
    auto it = entries_.find(identifier);
    if (it == entries_.end() || it->second.num_refs != 0) {
      fail("LRU list holds '" + identifier + "' which is not an unreferenced entry");
    }
  }
}

}  // namespace mmcore
