#include <gtest/gtest.h>

#include "engine/types.h"

namespace mmcore {
namespace {

TEST(Types, ModalityNames) {
  EXPECT_STREQ(modality_name(Modality::kImage), "image");
  EXPECT_STREQ(modality_name(Modality::kVideo), "video");
  EXPECT_STREQ(modality_name(Modality::kAudio), "audio");
}

}  // namespace
}  // namespace mmcore
