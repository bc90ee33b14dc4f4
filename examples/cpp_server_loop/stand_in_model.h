#pragma once
// A stand-in for the model: an "encoder" that produces `num_embeds` rows per item and keeps them
// under the core's encoder-cache handles, and an "LM" that returns one token per sampled request.
// It checks what a real runner relies on: every scattered handle is encoded, rows stay in range.
#include <mmcore/scheduler_output.h>

#include <cstdint>
#include <stdexcept>
#include <unordered_map>
#include <vector>

class StandInModel {
 public:
  StandInModel(int32_t vocab_size, int32_t eos_token_id)
      : vocab_size_(vocab_size), eos_token_id_(eos_token_id) {}

  // Runs the encoder on the step's items, drops freed outputs, checks the scatter plan and
  // returns the sampled token of each sampling request (in sampling order).
  // Throws std::runtime_error if the step refers to an encoder output that does not exist.
  std::vector<int32_t> execute(const mmcore::SchedulerOutput& step,
                               const std::unordered_map<int64_t, int32_t>& item_rows);

  [[nodiscard]] int64_t num_encoded_items() const { return num_encoded_; }
  [[nodiscard]] size_t num_cached_outputs() const { return encoder_outputs_.size(); }

 private:
  int32_t vocab_size_;
  int32_t eos_token_id_;
  std::unordered_map<int64_t, int32_t> encoder_outputs_;  // handle -> rows held
  int64_t num_encoded_ = 0;
};
