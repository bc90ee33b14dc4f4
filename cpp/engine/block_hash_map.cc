#include "engine/block_hash_map.h"

namespace mmcore {

namespace {

size_t capacity_for(int32_t max_entries) {
  size_t cap = 16;
  while (cap < 2 * static_cast<size_t>(max_entries)) cap <<= 1;
  return cap;
}

}  // namespace

BlockHashMap::BlockHashMap(int32_t max_entries)
    : slots_(capacity_for(max_entries)), mask_(slots_.size() - 1) {}

BlockId BlockHashMap::find(BlockHash hash) const {
  for (size_t i = home(hash);; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.block < 0) return -1;
    if (s.hash == hash) return s.block;
  }
}

void BlockHashMap::insert(BlockHash hash, BlockId block) {
  size_t i = home(hash);
  while (slots_[i].block >= 0) i = (i + 1) & mask_;
  slots_[i] = Slot{hash, block};
  ++size_;
}

void BlockHashMap::erase(BlockHash hash) {
  size_t i = home(hash);
  while (true) {
    if (slots_[i].block < 0) return;
    if (slots_[i].hash == hash) break;
    i = (i + 1) & mask_;
  }
  // Backward shift: pull later entries of the probe run into the hole when allowed.
  size_t j = i;
  while (true) {
    j = (j + 1) & mask_;
    if (slots_[j].block < 0) break;
    const size_t k = home(slots_[j].hash);
    // Entry j may move to i unless its home lies cyclically in (i, j].
    const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
    if (!stays) {
      slots_[i] = slots_[j];
      i = j;
    }
  }
  slots_[i].block = -1;
  --size_;
}

}  // namespace mmcore
