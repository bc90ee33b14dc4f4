// Contract test of the core's multimodal embedding API as another server would use it: public
// headers only, no model. A prompt with one placeholder per item goes through placeholder
// expansion, its features drive the encoder cache, and every misuse fails with
// std::invalid_argument (never a crash or a silent wrong answer).
#include "engine/encoder_cache.h"
#include "engine/placeholders.h"
#include "engine/types.h"

#include <gtest/gtest.h>

#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using mmcore::EncoderCacheManager;
using mmcore::ExpandedPrompt;
using mmcore::MMFeature;
using mmcore::Modality;
using mmcore::PlaceholderItem;
using mmcore::PlaceholderToken;
using mmcore::TokenId;

constexpr TokenId kImageToken = 32000;
constexpr TokenId kAudioToken = 32001;
constexpr TokenId kBegin = 32002;
constexpr TokenId kEnd = 32003;

PlaceholderItem make_item(Modality modality, std::string id, TokenId token, int32_t n) {
  PlaceholderItem item;
  item.modality = modality;
  item.identifier = std::move(id);
  item.placeholder_token_id = token;
  item.num_embeds = n;
  return item;
}

// What every caller relies on: features sorted, disjoint, inside the tokens, covering exactly
// the item's expansion, with num_embeds equal to the mask's count.
void expect_well_formed(const ExpandedPrompt& out, const std::vector<PlaceholderItem>& items) {
  ASSERT_EQ(out.features.size(), items.size());
  int32_t prev_end = 0;
  std::multiset<std::string> ids;
  for (const MMFeature& f : out.features) {
    EXPECT_GE(f.offset, prev_end);
    EXPECT_GT(f.length, 0);
    EXPECT_LE(f.offset + f.length, static_cast<int32_t>(out.token_ids.size()));
    prev_end = f.offset + f.length;
    ids.insert(f.identifier);
    const PlaceholderItem* item = nullptr;
    for (const auto& it : items) {
      if (it.identifier == f.identifier) item = &it;
    }
    ASSERT_NE(item, nullptr);
    const std::vector<TokenId> expected = mmcore::item_expansion(*item);
    EXPECT_EQ(std::vector<TokenId>(out.token_ids.begin() + f.offset,
                                   out.token_ids.begin() + f.offset + f.length),
              expected);
    if (f.embed_mask.empty()) {
      EXPECT_EQ(f.num_embeds, f.length);
    } else {
      ASSERT_EQ(f.embed_mask.size(), static_cast<size_t>(f.length));
      int32_t count = 0;
      for (uint8_t m : f.embed_mask) {
        EXPECT_TRUE(m == 0 || m == 1);
        count += m;
      }
      EXPECT_EQ(f.num_embeds, count);
    }
  }
  EXPECT_EQ(ids.size(), items.size());
}

TEST(CoreApi, ModalityNamesAreStable) {
  EXPECT_STREQ(mmcore::modality_name(Modality::kImage), "image");
  EXPECT_STREQ(mmcore::modality_name(Modality::kVideo), "video");
  EXPECT_STREQ(mmcore::modality_name(Modality::kAudio), "audio");
}

TEST(CoreApi, PromptToEncoderCacheRoundTrip) {
  PlaceholderItem framed = make_item(Modality::kImage, "sha256:cat", kImageToken, 0);
  framed.replacement = {kBegin, kImageToken, kImageToken, kImageToken, kEnd};
  framed.embed_mask = {0, 1, 1, 1, 0};
  const std::vector<PlaceholderItem> items = {
      make_item(Modality::kImage, "sha256:dog", kImageToken, 4), framed,
      make_item(Modality::kAudio, "sha256:bark", kAudioToken, 2)};
  const std::vector<TokenId> prompt = {1, kImageToken, 5, kAudioToken, 6, kImageToken, 2};
  const ExpandedPrompt out = mmcore::expand_placeholders(
      prompt, items, {Modality::kImage, Modality::kAudio}, 128,
      {{kImageToken, Modality::kImage, "<image>"}, {kAudioToken, Modality::kAudio, "<audio>"}});
  expect_well_formed(out, items);
  EXPECT_EQ(out.features[1].modality, Modality::kAudio);

  // The encoder cache takes the features' sizes; a second request shares the entries.
  EncoderCacheManager cache(16);
  std::vector<int64_t> handles;
  for (const MMFeature& f : out.features) {
    ASSERT_FALSE(cache.lookup(f.identifier));
    ASSERT_TRUE(cache.can_allocate(f.num_embeds));
    handles.push_back(cache.allocate(f.identifier, f.num_embeds, /*request=*/1));
  }
  EXPECT_EQ(std::set<int64_t>(handles.begin(), handles.end()).size(), handles.size());
  for (size_t i = 0; i < out.features.size(); ++i) {
    ASSERT_TRUE(cache.lookup(out.features[i].identifier));
    EXPECT_EQ(cache.acquire(out.features[i].identifier, /*request=*/2), handles[i]);
  }
  EXPECT_EQ(cache.stats().used_embeds, 4 + 2 + 3);
  EXPECT_EQ(cache.stats().num_hits, 3);
  cache.release_all(1);
  cache.release_all(2);
  EXPECT_EQ(cache.stats().num_referenced_entries, 0);
  EXPECT_EQ(cache.stats().num_entries, 3);
  EXPECT_TRUE(cache.take_freed().empty());
  cache.check_invariants();
}

TEST(CoreApi, ExpansionIsIdempotent) {
  const std::vector<PlaceholderItem> items = {make_item(Modality::kImage, "x", kImageToken, 3),
                                              make_item(Modality::kImage, "y", kImageToken, 1)};
  const ExpandedPrompt once =
      mmcore::expand_placeholders({kImageToken, 9, kImageToken}, items, {Modality::kImage}, 64);
  const ExpandedPrompt twice =
      mmcore::expand_placeholders(once.token_ids, items, {Modality::kImage}, 64);
  EXPECT_EQ(once.token_ids, twice.token_ids);
  expect_well_formed(twice, items);
}

TEST(CoreApi, EveryMisuseIsInvalidArgument) {
  const auto image = make_item(Modality::kImage, "x", kImageToken, 3);
  const std::vector<Modality> images = {Modality::kImage};
  EXPECT_THROW((void)mmcore::expand_placeholders({1}, {image}, images, 64), std::invalid_argument);
  EXPECT_THROW((void)mmcore::expand_placeholders({kImageToken, kImageToken}, {image}, images, 64),
               std::invalid_argument);
  EXPECT_THROW((void)mmcore::expand_placeholders({kImageToken}, {image}, {Modality::kAudio}, 64),
               std::invalid_argument);
  EXPECT_THROW((void)mmcore::expand_placeholders({kImageToken}, {image}, images, 2),
               std::invalid_argument);
  EXPECT_THROW((void)mmcore::expand_placeholders({kImageToken}, {image}, images, -1),
               std::invalid_argument);
  EXPECT_THROW(EncoderCacheManager(-1), std::invalid_argument);
  EncoderCacheManager cache(4);
  EXPECT_THROW(cache.acquire("never", 1), std::invalid_argument);
  EXPECT_THROW(cache.allocate("big", 5, 1), std::invalid_argument);
  EXPECT_THROW(cache.allocate("empty", 0, 1), std::invalid_argument);
  (void)cache.allocate("x", 4, 1);
  EXPECT_THROW(cache.allocate("x", 4, 2), std::invalid_argument);
  // Releasing what was never held is a no-op, not an error.
  cache.release("x", 99);
  cache.release("never", 1);
  cache.release_all(99);
  EXPECT_EQ(cache.num_refs("x"), 1);
  cache.check_invariants();
}

TEST(CoreApi, FailedCallsLeaveNoPartialState) {
  EncoderCacheManager cache(4);
  (void)cache.allocate("pinned", 3, 1);
  EXPECT_THROW(cache.allocate("new", 2, 2), std::invalid_argument);
  EXPECT_FALSE(cache.contains("new"));
  EXPECT_EQ(cache.used_embeds(), 3);
  EXPECT_TRUE(cache.take_freed().empty());
  cache.check_invariants();
}

}  // namespace
