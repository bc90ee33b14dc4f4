#pragma once
// Placeholder expansion: a prompt in HF format carries ONE placeholder token per multimodal item;
// the model needs one position per encoder embedding (plus any begin/end/newline tokens).
//
//   prompt:    | Describe | <image> | and | <image> |
//   expanded:  | Describe | <image> x 576 | and | <s> <image> x 64 <e> |
//   features:             {offset 1, len 576}    {offset 579, len 66, mask 0 1..1 0}
//
// A prompt that is already expanded (each item's exact expansion present instead of its single
// placeholder) is accepted as is, per placeholder token: all of its items expanded, or none.
#include <cstdint>
#include <string>
#include <vector>

#include "types.h"

namespace mmcore {

struct PlaceholderItem {
  Modality modality = Modality::kImage;
  std::string identifier;
  TokenId placeholder_token_id = 0;
  int32_t num_embeds = 0;            // used when replacement is empty: N x placeholder
  std::vector<TokenId> replacement;  // optional full replacement sequence (e.g. <start> pads <end>)
  // With replacement: 1 where a position takes an embedding; empty = every position does.
  std::vector<uint8_t> embed_mask;
};

// A placeholder token the model knows: lets error messages name it ("<image>") and catches
// placeholders in the prompt for which no item was given.
struct PlaceholderToken {
  TokenId token_id = 0;
  Modality modality = Modality::kImage;
  std::string text;  // e.g. "<image>", "<|image_pad|>"
};

struct ExpandedPrompt {
  std::vector<TokenId> token_ids;
  std::vector<MMFeature> features;  // one per item, sorted by offset (= prompt order)
};

// Replaces the ONE placeholder token per item (in prompt order, items matched to placeholders of
// their own placeholder_token_id in order) by its expansion. Also accepts prompts that are already
// expanded (exactly the expansion present at each item's position, as vLLM does).
// Throws std::invalid_argument with messages like
//   "prompt has 2 <image> placeholders but 1 image was given",
//   "model does not accept audio input",
//   "prompt is 5000 tokens after expanding placeholders, longer than the maximum of 4096".
[[nodiscard]] ExpandedPrompt expand_placeholders(const std::vector<TokenId>& prompt,
                                                 const std::vector<PlaceholderItem>& items,
                                                 const std::vector<Modality>& allowed_modalities,
                                                 int32_t max_len);

// Same, naming placeholders by `placeholder_tokens` in messages; a known placeholder token that
// appears in the prompt with no item of its own is an error ("... but 0 images were given").
[[nodiscard]] ExpandedPrompt expand_placeholders(
    const std::vector<TokenId>& prompt, const std::vector<PlaceholderItem>& items,
    const std::vector<Modality>& allowed_modalities, int32_t max_len,
    const std::vector<PlaceholderToken>& placeholder_tokens);

// The tokens one item occupies in an expanded prompt (N x placeholder, or its replacement).
// Throws std::invalid_argument if the item is malformed (no embeddings, mask of the wrong size).
[[nodiscard]] std::vector<TokenId> item_expansion(const PlaceholderItem& item);

}  // namespace mmcore
