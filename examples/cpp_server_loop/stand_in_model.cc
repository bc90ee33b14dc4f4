#include "stand_in_model.h"

#include <string>

std::vector<int32_t> StandInModel::execute(const mmcore::SchedulerOutput& step,
                                           const std::unordered_map<int64_t, int32_t>& item_rows) {
  // 1. Drop encoder outputs the core evicted.
  for (int64_t handle : step.freed_encoder_handles) encoder_outputs_.erase(handle);
  // 2. Encode the items the step asks for (a real runner batches them through the vision tower).
  for (size_t i = 0; i < step.encoder_handles.size(); ++i) {
    encoder_outputs_[step.encoder_handles[i]] = item_rows.at(step.encoder_handles[i]);
    ++num_encoded_;
  }
  // 3. Scatter: inputs_embeds[dst : dst + len] = encoder_output[handle][src : src + len].
  for (size_t i = 0; i < step.scatter_handles.size(); ++i) {
    auto it = encoder_outputs_.find(step.scatter_handles[i]);
    if (it == encoder_outputs_.end()) {
      throw std::runtime_error("scatter from encoder output " +
                               std::to_string(step.scatter_handles[i]) + " that is not held");
    }
    if (step.scatter_src_offsets[i] + step.scatter_lens[i] > it->second ||
        step.scatter_dst_rows[i] + step.scatter_lens[i] > step.num_tokens()) {
      throw std::runtime_error("scatter row out of range");
    }
  }
  // 4. "LM forward" + sampling: a token from the last input row of each sampling request; every
  // 29th value is EOS so that some requests stop early.
  std::vector<int32_t> sampled(step.logits_indices.size());
  for (size_t i = 0; i < sampled.size(); ++i) {
    const int32_t row = step.logits_indices[i];
    const int64_t mixed = static_cast<int64_t>(step.input_ids[row]) * 31 + step.positions[row];
    sampled[i] = mixed % 29 == 0 ? eos_token_id_ : static_cast<int32_t>(mixed % vocab_size_);
  }
  return sampled;
}
