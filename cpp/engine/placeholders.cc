#include "engine/placeholders.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

namespace mmcore {
namespace {

// Where one item sits in the input prompt: one placeholder token, or its full expansion.
struct Match {
  int64_t prompt_offset = 0;
  int64_t prompt_len = 0;
  size_t item = 0;
};

// The items sharing one placeholder token, in prompt order.
struct Group {
  TokenId token_id = 0;
  std::vector<size_t> items;
  const PlaceholderToken* known = nullptr;  // the model's description of the token, if given
};

const char* plural_noun(Modality modality, bool plural) {
  switch (modality) {
    case Modality::kImage:
      return plural ? "images" : "image";
    case Modality::kVideo:
      return plural ? "videos" : "video";
    case Modality::kAudio:
      return plural ? "audio clips" : "audio clip";
  }
  return plural ? "items" : "item";
}

// "2 <image> placeholders" or, without a known text, "2 placeholders of token 32000".
std::string count_placeholders(int64_t count, TokenId token_id, const PlaceholderToken* known) {
  const std::string noun = count == 1 ? "placeholder" : "placeholders";
  if (known != nullptr && !known->text.empty()) {
    return std::to_string(count) + " " + known->text + " " + noun;
  }
  return std::to_string(count) + " " + noun + " of token " + std::to_string(token_id);
}

std::string count_given(int64_t count, const char* singular, const char* plural) {
  return std::to_string(count) + " " + (count == 1 ? singular : plural) +
         (count == 1 ? " was given" : " were given");
}

// "image 1": the item's index among the items of its modality.
std::string describe_item(const std::vector<PlaceholderItem>& items, size_t index) {
  const Modality modality = items[index].modality;
  const auto rank =
      std::count_if(items.begin(), items.begin() + static_cast<ptrdiff_t>(index),
                    [&](const PlaceholderItem& it) { return it.modality == modality; });
  return std::string(modality_name(modality)) + " " + std::to_string(rank);
}

int64_t expansion_len(const PlaceholderItem& item) {
  return item.replacement.empty() ? item.num_embeds : static_cast<int64_t>(item.replacement.size());
}

void validate_item(const std::vector<PlaceholderItem>& items, size_t index,
                   const std::vector<Modality>& allowed_modalities, int32_t max_len) {
  const PlaceholderItem& item = items[index];
  if (std::find(allowed_modalities.begin(), allowed_modalities.end(), item.modality) ==
      allowed_modalities.end()) {
    throw std::invalid_argument(std::string("model does not accept ") +
                                modality_name(item.modality) + " input");
  }
  const std::string name = describe_item(items, index);
  if (item.identifier.empty()) throw std::invalid_argument(name + " has an empty identifier");
  if (item.placeholder_token_id < 0) {
    throw std::invalid_argument(name + " has a negative placeholder token id " +
                                std::to_string(item.placeholder_token_id));
  }
  if (expansion_len(item) > max_len) {
    throw std::invalid_argument(name + " needs " + std::to_string(expansion_len(item)) +
                                " tokens, longer than the maximum prompt length of " +
                                std::to_string(max_len));
  }
  try {
    (void)item_expansion(item);  // validates counts and mask without keeping the result
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(name + ": " + e.what());
  }
}

bool tokens_at(const std::vector<TokenId>& prompt, int64_t offset,
               const std::vector<TokenId>& tokens) {
  if (offset + static_cast<int64_t>(tokens.size()) > static_cast<int64_t>(prompt.size())) {
    return false;
  }
  return std::equal(tokens.begin(), tokens.end(), prompt.begin() + offset);
}

bool all_placeholders(const std::vector<TokenId>& expansion, TokenId token_id) {
  return std::all_of(expansion.begin(), expansion.end(), [&](TokenId t) { return t == token_id; });
}

// Why a run of placeholders is no item's expansion: "... needs exactly 5 <image> tokens for
// image 0, found 3". Empty when the item's expansion is not a plain run of placeholders.
std::string run_mismatch(const Group& group, const std::vector<PlaceholderItem>& items, size_t item,
                         const std::vector<TokenId>& expansion, int64_t run) {
  const int64_t needed = static_cast<int64_t>(expansion.size());
  if (needed <= 1 || run <= 1 || run == needed || !all_placeholders(expansion, group.token_id)) {
    return "";
  }
  const bool named = group.known != nullptr && !group.known->text.empty();
  const std::string tokens = named ? " " + group.known->text + " tokens"
                                   : " copies of token " + std::to_string(group.token_id);
  return "an already-expanded prompt needs exactly " + std::to_string(needed) + tokens + " for " +
         describe_item(items, item) + ", found " + std::to_string(run);
}

// Reads the group's items as already expanded: each expansion present, in order, with no other
// occurrence of the placeholder token. On failure fills `why` when there is a specific reason.
bool match_expanded(const std::vector<TokenId>& prompt, const Group& group,
                    const std::vector<PlaceholderItem>& items,
                    const std::vector<std::vector<TokenId>>& expansions, std::vector<Match>& out,
                    std::string& why) {
  std::vector<Match> found;
  size_t next = 0;
  const int64_t n = static_cast<int64_t>(prompt.size());
  auto run_from = [&](int64_t p) {
    int64_t run = 0;
    while (p + run < n && prompt[p + run] == group.token_id) ++run;
    return run;
  };
  for (int64_t p = 0; p < n;) {
    if (next < group.items.size()) {
      const size_t item = group.items[next];
      const auto& expansion = expansions[item];
      if (prompt[p] == expansion.front() && tokens_at(prompt, p, expansion)) {
        found.push_back({p, static_cast<int64_t>(expansion.size()), item});
        p += static_cast<int64_t>(expansion.size());
        ++next;
        continue;
      }
    }
    if (prompt[p] == group.token_id) {
      // A placeholder outside every expansion: not an expanded prompt. Name the run when it
      // is a wrong-length expansion of the item before it or of the next item.
      if (!found.empty() && found.back().prompt_offset + found.back().prompt_len == p) {
        const Match& prev = found.back();
        why = run_mismatch(group, items, prev.item, expansions[prev.item],
                           prev.prompt_len + run_from(p));
      }
      if (why.empty() && next < group.items.size()) {
        const size_t item = group.items[next];
        why = run_mismatch(group, items, item, expansions[item], run_from(p));
      }
      return false;
    }
    ++p;
  }
  if (next != group.items.size()) return false;
  out.insert(out.end(), found.begin(), found.end());
  return true;
}

// Finds every item of the group in the prompt, expanded or not (all the same way).
void match_group(const std::vector<TokenId>& prompt, const Group& group,
                 const std::vector<PlaceholderItem>& items,
                 const std::vector<std::vector<TokenId>>& expansions, std::vector<Match>& out) {
  std::string why;
  if (match_expanded(prompt, group, items, expansions, out, why)) return;
  std::vector<int64_t> positions;
  for (int64_t p = 0; p < static_cast<int64_t>(prompt.size()); ++p) {
    if (prompt[p] == group.token_id) positions.push_back(p);
  }
  if (positions.size() == group.items.size()) {
    for (size_t k = 0; k < positions.size(); ++k) out.push_back({positions[k], 1, group.items[k]});
    return;
  }
  const Modality modality = items[group.items.front()].modality;
  const bool one_modality = std::all_of(group.items.begin(), group.items.end(),
                                        [&](size_t i) { return items[i].modality == modality; });
  std::string message =
      "prompt has " +
      count_placeholders(static_cast<int64_t>(positions.size()), group.token_id, group.known) +
      " but " +
      count_given(static_cast<int64_t>(group.items.size()),
                  one_modality ? plural_noun(modality, false) : "item",
                  one_modality ? plural_noun(modality, true) : "items");
  if (!why.empty()) message += " (" + why + ")";
  throw std::invalid_argument(message);
}

// Groups items by placeholder token, in order of each token's first item.
std::vector<Group> group_items(const std::vector<PlaceholderItem>& items,
                               const std::vector<PlaceholderToken>& placeholder_tokens) {
  std::vector<Group> groups;
  for (size_t i = 0; i < items.size(); ++i) {
    const TokenId token = items[i].placeholder_token_id;
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const Group& g) { return g.token_id == token; });
    if (it == groups.end()) {
      Group group;
      group.token_id = token;
      for (const auto& known : placeholder_tokens) {
        if (known.token_id == token) group.known = &known;
      }
      groups.push_back(group);
      it = groups.end() - 1;
    }
    it->items.push_back(i);
  }
  return groups;
}

// A known placeholder token outside every item's range means an item is missing.
void check_unclaimed_placeholders(const std::vector<TokenId>& prompt,
                                  const std::vector<Match>& matches,
                                  const std::vector<Group>& groups,
                                  const std::vector<PlaceholderToken>& placeholder_tokens) {
  for (const auto& known : placeholder_tokens) {
    const bool has_items = std::any_of(
        groups.begin(), groups.end(), [&](const Group& g) { return g.token_id == known.token_id; });
    if (has_items) continue;
    int64_t count = 0;
    size_t next_match = 0;
    for (int64_t p = 0; p < static_cast<int64_t>(prompt.size()); ++p) {
      while (next_match < matches.size() &&
             matches[next_match].prompt_offset + matches[next_match].prompt_len <= p) {
        ++next_match;
      }
      const bool inside = next_match < matches.size() && matches[next_match].prompt_offset <= p;
      if (!inside && prompt[p] == known.token_id) ++count;
    }
    if (count > 0) {
      throw std::invalid_argument(
          "prompt has " + count_placeholders(count, known.token_id, &known) + " but " +
          count_given(0, plural_noun(known.modality, false), plural_noun(known.modality, true)));
    }
  }
}

}  // namespace

std::vector<TokenId> item_expansion(const PlaceholderItem& item) {
  if (item.replacement.empty()) {
    if (!item.embed_mask.empty()) {
      throw std::invalid_argument("embed_mask given without a replacement sequence");
    }
    if (item.num_embeds <= 0) {
      throw std::invalid_argument("needs num_embeds > 0 or a replacement sequence, got " +
                                  std::to_string(item.num_embeds) + " embeddings");
    }
    return std::vector<TokenId>(static_cast<size_t>(item.num_embeds), item.placeholder_token_id);
  }
  if (!item.embed_mask.empty() && item.embed_mask.size() != item.replacement.size()) {
    throw std::invalid_argument("embed_mask has " + std::to_string(item.embed_mask.size()) +
                                " entries but the replacement has " +
                                std::to_string(item.replacement.size()) + " tokens");
  }
  const int64_t masked = item.embed_mask.empty()
                             ? static_cast<int64_t>(item.replacement.size())
                             : std::count_if(item.embed_mask.begin(), item.embed_mask.end(),
                                             [](uint8_t m) { return m != 0; });
  if (masked == 0) throw std::invalid_argument("embed_mask selects no position for embeddings");
  if (item.num_embeds != 0 && item.num_embeds != masked) {
    throw std::invalid_argument("num_embeds is " + std::to_string(item.num_embeds) +
                                " but embed_mask selects " + std::to_string(masked) + " positions");
  }
  return item.replacement;
}

ExpandedPrompt expand_placeholders(const std::vector<TokenId>& prompt,
                                   const std::vector<PlaceholderItem>& items,
                                   const std::vector<Modality>& allowed_modalities,
                                   int32_t max_len) {
  return expand_placeholders(prompt, items, allowed_modalities, max_len, {});
}

ExpandedPrompt expand_placeholders(const std::vector<TokenId>& prompt,
                                   const std::vector<PlaceholderItem>& items,
                                   const std::vector<Modality>& allowed_modalities, int32_t max_len,
                                   const std::vector<PlaceholderToken>& placeholder_tokens) {
  if (max_len <= 0) {
    throw std::invalid_argument("max_len must be > 0, got " + std::to_string(max_len));
  }
  for (size_t p = 0; p < prompt.size(); ++p) {
    if (prompt[p] < 0) {
      throw std::invalid_argument("prompt token " + std::to_string(p) + " is " +
                                  std::to_string(prompt[p]) + "; token ids must be >= 0");
    }
  }
  std::vector<std::vector<TokenId>> expansions;
  expansions.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    validate_item(items, i, allowed_modalities, max_len);
    expansions.push_back(item_expansion(items[i]));
  }

  const std::vector<Group> groups = group_items(items, placeholder_tokens);
  std::vector<Match> matches;
  for (const Group& group : groups) match_group(prompt, group, items, expansions, matches);
  std::sort(matches.begin(), matches.end(),
            [](const Match& a, const Match& b) { return a.prompt_offset < b.prompt_offset; });
  for (size_t k = 1; k < matches.size(); ++k) {
    if (matches[k].prompt_offset < matches[k - 1].prompt_offset + matches[k - 1].prompt_len) {
      throw std::invalid_argument("the placeholders of " +
                                  describe_item(items, matches[k - 1].item) + " and " +
                                  describe_item(items, matches[k].item) + " overlap in the prompt");
    }
  }
  check_unclaimed_placeholders(prompt, matches, groups, placeholder_tokens);

  int64_t total = static_cast<int64_t>(prompt.size());
  for (const Match& m : matches) {
    total += static_cast<int64_t>(expansions[m.item].size()) - m.prompt_len;
  }
  if (total > max_len) {
    throw std::invalid_argument(
        "prompt is " + std::to_string(total) +
        " tokens after expanding placeholders, longer than the maximum of " +
        std::to_string(max_len));
  }

  ExpandedPrompt result;
  result.token_ids.reserve(static_cast<size_t>(total));
  result.features.reserve(matches.size());
  int64_t copied = 0;  // prompt tokens consumed so far
  for (const Match& m : matches) {
    result.token_ids.insert(result.token_ids.end(), prompt.begin() + copied,
                            prompt.begin() + m.prompt_offset);
    const PlaceholderItem& item = items[m.item];
    const auto& expansion = expansions[m.item];
    MMFeature feature;
    feature.modality = item.modality;
    feature.identifier = item.identifier;
    feature.offset = static_cast<int32_t>(result.token_ids.size());
    feature.length = static_cast<int32_t>(expansion.size());
    const bool all_embeds =
        std::all_of(item.embed_mask.begin(), item.embed_mask.end(), [](uint8_t v) { return v; });
    if (!all_embeds) {
      feature.embed_mask.reserve(item.embed_mask.size());
      for (uint8_t v : item.embed_mask) feature.embed_mask.push_back(v != 0 ? 1 : 0);
    }
    feature.num_embeds =
        all_embeds ? feature.length
                   : std::accumulate(feature.embed_mask.begin(), feature.embed_mask.end(), 0);
    result.features.push_back(std::move(feature));
    result.token_ids.insert(result.token_ids.end(), expansion.begin(), expansion.end());
    copied = m.prompt_offset + m.prompt_len;
  }
  result.token_ids.insert(result.token_ids.end(), prompt.begin() + copied, prompt.end());
  return result;
}

}  // namespace mmcore
