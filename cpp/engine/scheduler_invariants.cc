// Scheduler::check_invariants: the consistency checks property tests run after every step.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/scheduler.h"

namespace mmcore {

namespace {

[[noreturn]] void broken(const std::string& what) {
  throw std::logic_error("scheduler invariant broken: " + what);
}

}  // namespace

void Scheduler::check_invariants() const {
  kv_.check_invariants();
  encoder_cache_.check_invariants();
  if (static_cast<size_t>(num_running() + num_waiting()) != requests_.size()) {
    broken(std::to_string(num_running()) + " running + " + std::to_string(num_waiting()) +
           " waiting requests but " + std::to_string(requests_.size()) + " live ones");
  }
  if (kv_.num_requests() > num_running()) {
    broken(std::to_string(kv_.num_requests()) + " requests hold blocks but only " +
           std::to_string(num_running()) + " run");
  }
  if (num_running() > config_.max_num_seqs) broken("more running requests than max_num_seqs");
  for (const auto& [id, owned] : requests_) {
    const Request& r = *owned;
    const std::string name = "request " + std::to_string(id);
    const auto slots = static_cast<int64_t>(kv_.block_table(r).size()) * config_.block_size;
    if (static_cast<int32_t>(kv_.block_table(r).size()) != r.kv_num_blocks) {
      broken(name + " mirrors " + std::to_string(r.kv_num_blocks) + " blocks but holds " +
             std::to_string(kv_.block_table(r).size()));
    }
    if (r.status == RequestStatus::kRunning) {
      if (std::find(running_.begin(), running_.end(), &r) == running_.end()) {
        broken(name + " is marked running but not in the running list");
      }
      if (slots < r.num_computed_tokens) broken(name + " has fewer slots than computed tokens");
      check_group_tables(r, name);
      if (static_cast<int32_t>(kv_.cross_block_table(r).size()) != kv_.num_cross_blocks(r) ||
          r.cross_num_blocks != kv_.num_cross_blocks(r)) {
        broken(name + " runs with " + std::to_string(kv_.cross_block_table(r).size()) +
               " cross-attention blocks (mirror " + std::to_string(r.cross_num_blocks) +
               ") instead of " + std::to_string(kv_.num_cross_blocks(r)));
      }
    } else if (is_finished(r.status)) {
      broken(name + " is finished but still live");
    } else if (slots != 0 || r.num_computed_tokens != 0 || r.cross_num_blocks != 0 ||
               !kv_.cross_block_table(r).empty() || r.encoder_input_held) {
      broken(name + " is waiting but holds blocks, computed tokens or its encoder output");
    }
    if (r.encoder_input_held && encoder_cache_.num_refs(r.encoder_input.identifier) == 0) {
      broken(name + " holds its encoder input that nobody references in the encoder cache");
    }
    if (r.num_computed_tokens > r.num_tokens() + r.num_pending_tokens) {
      broken(name + " has more computed tokens than tokens");
    }
    for (size_t f = 0; f < r.features.size(); ++f) {
      if (r.item_held[f] && encoder_cache_.num_refs(r.features[f].identifier) == 0) {
        broken(name + " holds item '" + r.features[f].identifier +
               "' that nobody references in the encoder cache");
      }
    }
  }
}

void Scheduler::check_group_tables(const Request& r, const std::string& name) const {
  for (int32_t g = 1; g < kv_.num_groups(); ++g) {
    const std::vector<BlockId>& table = kv_.group_block_table(r, g);
    const int32_t window = kv_.group_window(g);
    // The next step's queries start at num_computed_tokens: what they can see must be held.
    const int32_t first =
        window <= 0 ? 0 : std::max(0, r.num_computed_tokens - window + 1) / config_.block_size;
    for (size_t b = static_cast<size_t>(first); b < table.size(); ++b) {
      if (table[b] == kNoBlock) {
        broken(name + " released block " + std::to_string(b) + " of KV group " + std::to_string(g) +
               " that its next query can still see");
      }
    }
    if (table.size() != kv_.block_table(r).size()) {
      broken(name + " has KV group tables of different lengths");
    }
  }
}

}  // namespace mmcore
