#include "engine/placeholders.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

namespace mmcore {
namespace {

constexpr TokenId kImage = 100;
constexpr TokenId kAudio = 101;
constexpr TokenId kStart = 102;
constexpr TokenId kEnd = 103;
constexpr TokenId kNewline = 104;
const std::vector<Modality> kImageOnly = {Modality::kImage};
const std::vector<Modality> kImageAudio = {Modality::kImage, Modality::kAudio};
const std::vector<PlaceholderToken> kKnown = {{kImage, Modality::kImage, "<image>"},
                                              {kAudio, Modality::kAudio, "<audio>"}};

PlaceholderItem image(const std::string& id, int32_t n) {
  PlaceholderItem item;
  item.modality = Modality::kImage;
  item.identifier = id;
  item.placeholder_token_id = kImage;
  item.num_embeds = n;
  return item;
}

PlaceholderItem audio(const std::string& id, int32_t n) {
  PlaceholderItem item = image(id, n);
  item.modality = Modality::kAudio;
  item.placeholder_token_id = kAudio;
  return item;
}

// <start> n x <image> <end>: only the pads take embeddings.
PlaceholderItem framed_image(const std::string& id, int32_t n) {
  PlaceholderItem item = image(id, 0);
  item.replacement.push_back(kStart);
  item.embed_mask.push_back(0);
  for (int32_t i = 0; i < n; ++i) {
    item.replacement.push_back(kImage);
    item.embed_mask.push_back(1);
  }
  item.replacement.push_back(kEnd);
  item.embed_mask.push_back(0);
  return item;
}

std::string error_of(const std::vector<TokenId>& prompt, const std::vector<PlaceholderItem>& items,
                     const std::vector<Modality>& allowed = kImageAudio, int32_t max_len = 4096,
                     const std::vector<PlaceholderToken>& known = kKnown) {
  try {
    (void)expand_placeholders(prompt, items, allowed, max_len, known);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no error";
}

TEST(Placeholders, RepeatsPlaceholderNumEmbedsTimes) {
  const ExpandedPrompt out =
      expand_placeholders({1, 2, kImage, 3}, {image("a", 4)}, kImageOnly, 64);
  EXPECT_EQ(out.token_ids, (std::vector<TokenId>{1, 2, kImage, kImage, kImage, kImage, 3}));
  ASSERT_EQ(out.features.size(), 1u);
  const MMFeature& f = out.features[0];
  EXPECT_EQ(f.modality, Modality::kImage);
  EXPECT_EQ(f.identifier, "a");
  EXPECT_EQ(f.offset, 2);
  EXPECT_EQ(f.length, 4);
  EXPECT_EQ(f.num_embeds, 4);
  EXPECT_TRUE(f.embed_mask.empty());
}

TEST(Placeholders, TwoImagesOfDifferentSizesInPromptOrder) {
  const ExpandedPrompt out =
      expand_placeholders({kImage, 7, kImage}, {image("a", 2), image("b", 3)}, kImageOnly, 64);
  EXPECT_EQ(out.token_ids, (std::vector<TokenId>{kImage, kImage, 7, kImage, kImage, kImage}));
  ASSERT_EQ(out.features.size(), 2u);
  EXPECT_EQ(out.features[0].identifier, "a");
  EXPECT_EQ(out.features[0].offset, 0);
  EXPECT_EQ(out.features[1].identifier, "b");
  EXPECT_EQ(out.features[1].offset, 3);
  EXPECT_EQ(out.features[1].length, 3);
}

TEST(Placeholders, ReplacementWithBeginEndTokensAndMask) {
  const ExpandedPrompt out =
      expand_placeholders({5, kImage, 6}, {framed_image("a", 3)}, kImageOnly, 64);
  EXPECT_EQ(out.token_ids, (std::vector<TokenId>{5, kStart, kImage, kImage, kImage, kEnd, 6}));
  const MMFeature& f = out.features.at(0);
  EXPECT_EQ(f.offset, 1);
  EXPECT_EQ(f.length, 5);
  EXPECT_EQ(f.num_embeds, 3);
  EXPECT_EQ(f.embed_mask, (std::vector<uint8_t>{0, 1, 1, 1, 0}));
}

TEST(Placeholders, NewlineTokensInsideTheImageTakeNoEmbeddings) {
  PlaceholderItem item = image("fuyu", 0);
  item.replacement = {kImage, kImage, kNewline, kImage, kImage, kNewline};
  item.embed_mask = {1, 1, 0, 1, 1, 0};
  const ExpandedPrompt out = expand_placeholders({kImage, 9}, {item}, kImageOnly, 64);
  EXPECT_EQ(out.token_ids,
            (std::vector<TokenId>{kImage, kImage, kNewline, kImage, kImage, kNewline, 9}));
  EXPECT_EQ(out.features.at(0).num_embeds, 4);
  EXPECT_EQ(out.features.at(0).length, 6);
}

TEST(Placeholders, ReplacementWithoutMaskEmbedsEveryPosition) {
  PlaceholderItem item = image("a", 0);
  item.replacement = {kImage, kImage, kImage};
  const ExpandedPrompt out = expand_placeholders({kImage}, {item}, kImageOnly, 64);
  EXPECT_EQ(out.features.at(0).num_embeds, 3);
  EXPECT_TRUE(out.features.at(0).embed_mask.empty());
}

TEST(Placeholders, MaskValuesAreNormalizedToZeroOne) {
  PlaceholderItem item = framed_image("a", 2);
  item.embed_mask = {0, 7, 255, 0};
  const ExpandedPrompt out = expand_placeholders({kImage}, {item}, kImageOnly, 64);
  EXPECT_EQ(out.features.at(0).embed_mask, (std::vector<uint8_t>{0, 1, 1, 0}));
  EXPECT_EQ(out.features.at(0).num_embeds, 2);
}

TEST(Placeholders, InterleavedModalitiesComeOutSortedByOffset) {
  // Items listed per modality; features follow the prompt.
  const std::vector<TokenId> prompt = {kImage, 1, kAudio, 2, kImage};
  const ExpandedPrompt out = expand_placeholders(
      prompt, {image("i0", 2), image("i1", 1), audio("a0", 3)}, kImageAudio, 64);
  EXPECT_EQ(out.token_ids,
            (std::vector<TokenId>{kImage, kImage, 1, kAudio, kAudio, kAudio, 2, kImage}));
  ASSERT_EQ(out.features.size(), 3u);
  EXPECT_EQ(out.features[0].identifier, "i0");
  EXPECT_EQ(out.features[1].identifier, "a0");
  EXPECT_EQ(out.features[1].modality, Modality::kAudio);
  EXPECT_EQ(out.features[1].offset, 3);
  EXPECT_EQ(out.features[2].identifier, "i1");
  EXPECT_EQ(out.features[2].offset, 7);
}

TEST(Placeholders, AlreadyExpandedPromptIsKeptAsIs) {
  const std::vector<PlaceholderItem> items = {image("a", 3), framed_image("b", 2)};
  const ExpandedPrompt once = expand_placeholders({1, kImage, 2, kImage}, items, kImageOnly, 64);
  const ExpandedPrompt twice = expand_placeholders(once.token_ids, items, kImageOnly, 64);
  EXPECT_EQ(twice.token_ids, once.token_ids);
  ASSERT_EQ(twice.features.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(twice.features[i].offset, once.features[i].offset);
    EXPECT_EQ(twice.features[i].length, once.features[i].length);
    EXPECT_EQ(twice.features[i].embed_mask, once.features[i].embed_mask);
  }
}

TEST(Placeholders, PlaceholderInsideItsOwnReplacementIsNotExpandedTwice) {
  // Gemma-3 style: the prompt token <start> is also the first token of the expansion's core.
  PlaceholderItem item = image("g", 0);
  item.placeholder_token_id = kStart;
  item.replacement = {kNewline, kStart, kImage, kImage, kEnd, kNewline};
  item.embed_mask = {0, 0, 1, 1, 0, 0};
  const ExpandedPrompt once = expand_placeholders({1, kStart, 2}, {item}, kImageOnly, 64);
  EXPECT_EQ(once.token_ids,
            (std::vector<TokenId>{1, kNewline, kStart, kImage, kImage, kEnd, kNewline, 2}));
  const ExpandedPrompt twice = expand_placeholders(once.token_ids, {item}, kImageOnly, 64);
  EXPECT_EQ(twice.token_ids, once.token_ids);
  EXPECT_EQ(twice.features.at(0).offset, 1);
}

TEST(Placeholders, AdjacentUnexpandedPlaceholdersAreNotMistakenForAnExpansion) {
  // <image><image> could read as image 0 (2 embeds) expanded; then image 1 would have no
  // placeholder, so both are taken as single placeholders.
  const ExpandedPrompt out =
      expand_placeholders({kImage, kImage}, {image("a", 2), image("b", 1)}, kImageOnly, 64);
  EXPECT_EQ(out.token_ids, (std::vector<TokenId>{kImage, kImage, kImage}));
  EXPECT_EQ(out.features.at(1).offset, 2);
}

TEST(Placeholders, PartiallyExpandedPromptNamesTheCounts) {
  EXPECT_EQ(error_of({kImage, kImage, kImage}, {image("a", 5)}),
            "prompt has 3 <image> placeholders but 1 image was given (an already-expanded prompt "
            "needs exactly 5 <image> tokens for image 0, found 3)");
  // Longer than the expansion: the first 2 would match, the third is left over.
  EXPECT_EQ(error_of({1, kImage, kImage, kImage, 2}, {image("a", 2)}),
            "prompt has 3 <image> placeholders but 1 image was given (an already-expanded prompt "
            "needs exactly 2 <image> tokens for image 0, found 3)");
  // The second image's run is short while the first is fully expanded.
  EXPECT_EQ(error_of({kImage, kImage, 5, kImage, kImage}, {image("a", 2), image("b", 3)},
                     kImageOnly, 64, {}),
            "prompt has 4 placeholders of token 100 but 2 images were given (an already-expanded "
            "prompt needs exactly 3 copies of token 100 for image 1, found 2)");
}

TEST(Placeholders, CountMismatchMessages) {
  EXPECT_EQ(error_of({kImage, 1, kImage}, {image("a", 2)}),
            "prompt has 2 <image> placeholders but 1 image was given");
  EXPECT_EQ(error_of({kImage}, {image("a", 2), image("b", 2)}),
            "prompt has 1 <image> placeholder but 2 images were given");
  EXPECT_EQ(error_of({1, 2}, {audio("a", 2)}),
            "prompt has 0 <audio> placeholders but 1 audio clip was given");
  EXPECT_EQ(error_of({kImage, 1}, {}), "prompt has 1 <image> placeholder but 0 images were given");
  // Without names the token id is given.
  EXPECT_EQ(error_of({kImage, kImage}, {image("a", 1)}, kImageOnly, 64, {}),
            "prompt has 2 placeholders of token 100 but 1 image was given");
}

TEST(Placeholders, UnknownPlaceholderWithoutItemsIsPlainText) {
  // Without the model's placeholder list, a lone token 100 is just a token.
  const ExpandedPrompt out = expand_placeholders({kImage, 1}, {}, kImageOnly, 64);
  EXPECT_EQ(out.token_ids, (std::vector<TokenId>{kImage, 1}));
  EXPECT_TRUE(out.features.empty());
}

TEST(Placeholders, ModalityTheModelLacks) {
  EXPECT_EQ(error_of({kAudio}, {audio("a", 2)}, kImageOnly), "model does not accept audio input");
}

TEST(Placeholders, LongerThanMaxLen) {
  EXPECT_EQ(error_of({1, kImage, 2}, {image("a", 10)}, kImageOnly, 11),
            "prompt is 12 tokens after expanding placeholders, longer than the maximum of 11");
  EXPECT_EQ(error_of({kImage}, {image("a", 5000)}, kImageOnly, 4096),
            "image 0 needs 5000 tokens, longer than the maximum prompt length of 4096");
  EXPECT_EQ(error_of({kImage}, {image("a", 1)}, kImageOnly, 0), "max_len must be > 0, got 0");
  // Exactly max_len fits.
  EXPECT_EQ(expand_placeholders({1, kImage, 2}, {image("a", 10)}, kImageOnly, 12).token_ids.size(),
            12u);
}

TEST(Placeholders, MalformedItems) {
  EXPECT_EQ(error_of({kImage}, {image("a", 0)}),
            "image 0: needs num_embeds > 0 or a replacement sequence, got 0 embeddings");
  EXPECT_EQ(error_of({kImage}, {image("", 2)}), "image 0 has an empty identifier");
  PlaceholderItem mask_only = image("a", 2);
  mask_only.embed_mask = {1, 1};
  EXPECT_EQ(error_of({kImage}, {mask_only}),
            "image 0: embed_mask given without a replacement sequence");
  PlaceholderItem short_mask = framed_image("a", 2);
  short_mask.embed_mask.pop_back();
  EXPECT_EQ(error_of({kImage}, {short_mask}),
            "image 0: embed_mask has 3 entries but the replacement has 4 tokens");
  PlaceholderItem empty_mask = framed_image("a", 2);
  std::fill(empty_mask.embed_mask.begin(), empty_mask.embed_mask.end(), 0);
  EXPECT_EQ(error_of({kImage}, {empty_mask}),
            "image 0: embed_mask selects no position for embeddings");
  PlaceholderItem disagree = framed_image("a", 2);
  disagree.num_embeds = 3;
  EXPECT_EQ(error_of({kImage}, {disagree}),
            "image 0: num_embeds is 3 but embed_mask selects 2 positions");
  EXPECT_EQ(error_of({kImage, kImage}, {image("a", 1), image("b", -4)}),
            "image 1: needs num_embeds > 0 or a replacement sequence, got -4 embeddings");
  EXPECT_EQ(error_of({-3}, {}), "prompt token 0 is -3; token ids must be >= 0");
}

TEST(Placeholders, PromptWithoutItemsIsUnchanged) {
  EXPECT_TRUE(expand_placeholders({}, {}, kImageOnly, 1).token_ids.empty());
  EXPECT_EQ(expand_placeholders({4, 5, 6}, {}, {}, 3).token_ids, (std::vector<TokenId>{4, 5, 6}));
}

TEST(Placeholders, ItemExpansionMatchesExpandedTokens) {
  EXPECT_EQ(item_expansion(image("a", 2)), (std::vector<TokenId>{kImage, kImage}));
  EXPECT_EQ(item_expansion(framed_image("b", 1)), (std::vector<TokenId>{kStart, kImage, kEnd}));
  EXPECT_THROW((void)item_expansion(image("c", 0)), std::invalid_argument);
}

}  // namespace
}  // namespace mmcore
