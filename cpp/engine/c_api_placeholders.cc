// C API: placeholder expansion.
#include <string>
#include <vector>

#include "engine/c_api_internal.h"
#include "engine/placeholders.h"

struct mmcore_expanded_prompt {
  mmcore::ExpandedPrompt prompt;
  std::vector<mmcore_mm_feature> features;  // views into prompt.features
};

namespace {

using mmcore::capi::guarded;
using mmcore::capi::HandleKind;
using mmcore::capi::require_array;
using mmcore::capi::require_pointer;

constexpr const char* kTypeName = "mmcore_expanded_prompt";

const mmcore_expanded_prompt& checked(const mmcore_expanded_prompt* p) {
  mmcore::capi::check_handle(p, HandleKind::kExpandedPrompt, kTypeName);
  return *p;
}

mmcore::PlaceholderItem to_item(const mmcore_placeholder_item& in) {
  mmcore::PlaceholderItem item;
  item.modality = mmcore::capi::to_modality(in.modality, "items[].modality");
  item.identifier = mmcore::capi::to_string_arg(in.identifier, "items[].identifier");
  item.placeholder_token_id = in.placeholder_token_id;
  item.num_embeds = in.num_embeds;
  require_array(in.replacement, in.replacement_len, "items[].replacement");
  item.replacement.assign(in.replacement, in.replacement + in.replacement_len);
  if (in.embed_mask != nullptr) {
    if (in.replacement_len == 0) {
      throw mmcore::capi::Error(
          MMCORE_ERROR_INVALID_ARGUMENT,
          "item '" + item.identifier + "' has an embed_mask but no replacement sequence");
    }
    item.embed_mask.assign(in.embed_mask, in.embed_mask + in.replacement_len);
  }
  return item;
}

}  // namespace

extern "C" {

mmcore_status mmcore_expand_placeholders(const int32_t* prompt, int32_t prompt_len,
                                         const mmcore_placeholder_item* items, int32_t num_items,
                                         const int32_t* allowed_modalities, int32_t num_allowed,
                                         int32_t max_len,
                                         const mmcore_placeholder_token* placeholder_tokens,
                                         int32_t num_placeholder_tokens,
                                         mmcore_expanded_prompt** out) {
  return guarded([&] {
    require_pointer(out, "out");
    *out = nullptr;
    require_array(prompt, prompt_len, "prompt");
    require_array(items, num_items, "items");
    require_array(allowed_modalities, num_allowed, "allowed_modalities");
    require_array(placeholder_tokens, num_placeholder_tokens, "placeholder_tokens");
    const std::vector<int32_t> tokens(prompt, prompt + prompt_len);
    std::vector<mmcore::PlaceholderItem> cpp_items;
    cpp_items.reserve(static_cast<size_t>(num_items));
    for (int32_t i = 0; i < num_items; ++i) cpp_items.push_back(to_item(items[i]));
    std::vector<mmcore::Modality> allowed;
    for (int32_t i = 0; i < num_allowed; ++i) {
      allowed.push_back(mmcore::capi::to_modality(allowed_modalities[i], "allowed_modalities[]"));
    }
    std::vector<mmcore::PlaceholderToken> known;
    for (int32_t i = 0; i < num_placeholder_tokens; ++i) {
      const mmcore_placeholder_token& t = placeholder_tokens[i];
      known.push_back({t.token_id,
                       mmcore::capi::to_modality(t.modality, "placeholder_tokens[].modality"),
                       mmcore::capi::to_string_arg(t.text, "placeholder_tokens[].text")});
    }
    auto* result = new mmcore_expanded_prompt();
    try {
      result->prompt = mmcore::expand_placeholders(tokens, cpp_items, allowed, max_len, known);
      for (const mmcore::MMFeature& f : result->prompt.features) {
        result->features.push_back({static_cast<int32_t>(f.modality), f.identifier.c_str(),
                                    f.offset, f.length, f.num_embeds,
                                    f.embed_mask.empty() ? nullptr : f.embed_mask.data()});
      }
      mmcore::capi::register_handle(result, HandleKind::kExpandedPrompt);
    } catch (...) {
      delete result;
      throw;
    }
    *out = result;
  });
}

mmcore_status mmcore_expanded_prompt_tokens(const mmcore_expanded_prompt* prompt,
                                            const int32_t** token_ids, int32_t* num_tokens) {
  return guarded([&] {
    const mmcore_expanded_prompt& p = checked(prompt);
    require_pointer(token_ids, "token_ids");
    require_pointer(num_tokens, "num_tokens");
    *token_ids = p.prompt.token_ids.data();
    *num_tokens = static_cast<int32_t>(p.prompt.token_ids.size());
  });
}

mmcore_status mmcore_expanded_prompt_features(const mmcore_expanded_prompt* prompt,
                                              const mmcore_mm_feature** features,
                                              int32_t* num_features) {
  return guarded([&] {
    const mmcore_expanded_prompt& p = checked(prompt);
    require_pointer(features, "features");
    require_pointer(num_features, "num_features");
    *features = p.features.data();
    *num_features = static_cast<int32_t>(p.features.size());
  });
}

mmcore_status mmcore_expanded_prompt_destroy(mmcore_expanded_prompt* prompt) {
  if (prompt == nullptr) return MMCORE_OK;
  return guarded([&] {
    mmcore::capi::unregister_handle(prompt, HandleKind::kExpandedPrompt, kTypeName);
    delete prompt;
  });
}

}  // extern "C"
