#include "engine/request_validation.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace mmcore {

namespace {

[[noreturn]] void reject(const Request& r, const std::string& why) {
  throw std::invalid_argument("request " + std::to_string(r.id) + ": " + why);
}

void validate_features(const Request& r, const SchedulerConfig& config) {
  int32_t prev_end = 0;
  std::unordered_map<std::string, int32_t> embeds_by_identifier;
  for (const MMFeature& f : r.features) {
    const std::string name = std::string(modality_name(f.modality)) + " '" + f.identifier + "'";
    if (f.identifier.empty()) reject(r, "a multimodal item has an empty identifier");
    if (f.length <= 0) reject(r, name + " has length " + std::to_string(f.length));
    if (f.offset < prev_end) {
      reject(r, name + " at offset " + std::to_string(f.offset) +
                    " is not sorted after / overlaps the previous item");
    }
    if (f.offset + f.length > r.num_prompt_tokens) {
      reject(r, name + " ends at token " + std::to_string(f.offset + f.length) +
                    " past the prompt of " + std::to_string(r.num_prompt_tokens) + " tokens");
    }
    if (!f.embed_mask.empty() && static_cast<int32_t>(f.embed_mask.size()) != f.length) {
      reject(r, name + " has an embed_mask of " + std::to_string(f.embed_mask.size()) +
                    " entries for " + std::to_string(f.length) + " tokens");
    }
    const int32_t masked =
        f.embed_mask.empty()
            ? f.length
            : static_cast<int32_t>(std::count_if(f.embed_mask.begin(), f.embed_mask.end(),
                                                 [](uint8_t m) { return m != 0; }));
    if (f.num_embeds != masked || masked == 0) {
      reject(r, name + " has num_embeds " + std::to_string(f.num_embeds) + " but " +
                    std::to_string(masked) + " positions take embeddings");
    }
    if (f.num_embeds > config.encoder_budget || f.num_embeds > config.encoder_cache_size) {
      reject(r, name + " needs " + std::to_string(f.num_embeds) +
                    " embeddings, more than the encoder budget (" +
                    std::to_string(config.encoder_budget) + ") or encoder cache size (" +
                    std::to_string(config.encoder_cache_size) + ")");
    }
    if (!config.chunk_inside_mm_items && f.length > config.max_num_batched_tokens) {
      reject(r, name + " spans " + std::to_string(f.length) +
                    " tokens, more than max_num_batched_tokens (" +
                    std::to_string(config.max_num_batched_tokens) +
                    ") and this model never splits an item across steps");
    }
    auto [it, inserted] = embeds_by_identifier.emplace(f.identifier, f.num_embeds);
    if (!inserted && it->second != f.num_embeds) {
      reject(r, "identifier '" + f.identifier + "' is used with different embedding counts");
    }
    prev_end = f.offset + f.length;
  }
  if (!config.enable_chunked_prefill) {
    // Without chunking every item of the prompt is encoded in one step.
    int64_t total = 0;
    for (const auto& [identifier, embeds] : embeds_by_identifier) total += embeds;
    if (total > config.encoder_budget || total > config.encoder_cache_size) {
      reject(r, "its items need " + std::to_string(total) +
                    " embeddings in one step (chunked prefill is off), more than the encoder "
                    "budget or cache size");
    }
  }
}

void validate_encoder_input(const Request& r, const SchedulerConfig& config) {
  const MMFeature& input = r.encoder_input;
  if (input.num_embeds < 0) reject(r, "the encoder input has a negative length");
  if (!r.is_encoder_decoder()) return;
  if (input.identifier.empty()) reject(r, "the encoder input has an empty identifier");
  if (!r.features.empty() || !r.mrope_positions.empty()) {
    reject(r,
           "an encoder-decoder request takes its media as the encoder input, not as prompt "
           "items or M-RoPE positions");
  }
  if (input.num_embeds > config.encoder_budget || input.num_embeds > config.encoder_cache_size) {
    reject(r, "the encoder input needs " + std::to_string(input.num_embeds) +
                  " encoder positions, more than the encoder budget (" +
                  std::to_string(config.encoder_budget) + ") or encoder cache size (" +
                  std::to_string(config.encoder_cache_size) + ")");
  }
}

}  // namespace

void validate_request(const Request& r, const SchedulerConfig& config) {
  const int32_t n = r.num_prompt_tokens;
  if (n <= 0) reject(r, "the prompt is empty");
  if (n > config.max_model_len) {
    reject(r, "the prompt is " + std::to_string(n) + " tokens, longer than max_model_len " +
                  std::to_string(config.max_model_len));
  }
  for (TokenId t : r.token_ids) {
    // -1 marks a pending sample in SchedulerOutput.input_ids; ids are never negative.
    if (t < 0) reject(r, "token id " + std::to_string(t) + " is negative");
  }
  if (r.sampling.max_tokens < 1) reject(r, "max_tokens must be >= 1");
  if (r.sampling.min_tokens < 0 || r.sampling.min_tokens > r.sampling.max_tokens) {
    reject(r, "min_tokens must be in [0, max_tokens]");
  }
  const int64_t final_len =
      std::min<int64_t>(static_cast<int64_t>(n) + r.sampling.max_tokens, config.max_model_len);
  const int64_t cross_blocks =
      (std::max(r.encoder_input.num_embeds, 0) + config.block_size - 1) / config.block_size;
  const int64_t per_group = (final_len + config.block_size - 1) / config.block_size;
  int64_t blocks = cross_blocks + (config.kv_group_windows.size() <= 1 ? per_group : 0);
  for (size_t g = 0; g < config.kv_group_windows.size() && config.kv_group_windows.size() > 1;
       ++g) {
    // A sliding group holds at most its window plus one step's chunk (and a block of slack).
    const int64_t window = config.kv_group_windows[g];
    const int64_t held =
        window <= 0
            ? per_group
            : (config.max_num_batched_tokens + window + config.block_size - 1) / config.block_size +
                  1;
    blocks += std::min(per_group, held);
  }
  if (blocks > config.num_blocks) {
    reject(r, "it may reach " + std::to_string(final_len) + " tokens = " + std::to_string(blocks) +
                  " KV blocks" +
                  (cross_blocks > 0
                       ? " (with " + std::to_string(cross_blocks) + " cross-attention blocks)"
                       : std::string()) +
                  ", more than the whole cache of " + std::to_string(config.num_blocks) +
                  " blocks");
  }
  if (!config.enable_chunked_prefill && n > config.max_num_batched_tokens) {
    reject(r, "the prompt is " + std::to_string(n) +
                  " tokens, more than max_num_batched_tokens with chunked prefill off");
  }
  if (!r.mrope_positions.empty() && r.mrope_positions.size() != 3 * static_cast<size_t>(n)) {
    reject(r, "mrope_positions must be 3 x " + std::to_string(n) + ", got " +
                  std::to_string(r.mrope_positions.size()) + " values");
  }
  validate_features(r, config);
  validate_encoder_input(r, config);
}

void prepare_request_items(Request& r) {
  const size_t n = r.features.size();
  r.item_held.assign(n, 0);
  r.item_handles.assign(n, -1);
  r.num_done_items = 0;
  r.items_end = n == 0 ? 0 : r.features.back().offset + r.features.back().length;
}

}  // namespace mmcore
