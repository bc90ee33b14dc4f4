#pragma once
// Vocabulary shared by every part of the core: ids, modalities, one struct per multimodal item.
#include <cstdint>
#include <string>
#include <vector>

namespace mmcore {

using TokenId = int32_t;
using RequestId = int64_t;
using BlockId = int32_t;

enum class Modality : uint8_t { kImage = 0, kVideo = 1, kAudio = 2 };

[[nodiscard]] const char* modality_name(Modality modality);

// One multimodal item inside an expanded prompt: tokens [offset, offset + length) belong to it.
// `embed_mask` (empty = all true) says which of those positions take an encoder embedding;
// `num_embeds` is the number of true entries, i.e. the rows of the encoder output.
struct MMFeature {
  Modality modality = Modality::kImage;
  std::string identifier;  // content hash or user uuid; the cache key for encoder + prefix caches
  int32_t offset = 0;
  int32_t length = 0;
  int32_t num_embeds = 0;
  std::vector<uint8_t> embed_mask;
};

}  // namespace mmcore
