#include "engine/types.h"

namespace mmcore {

const char* modality_name(Modality modality) {
  switch (modality) {
    case Modality::kImage:
      return "image";
    case Modality::kVideo:
      return "video";
    case Modality::kAudio:
      return "audio";
  }
  return "unknown";
}

}  // namespace mmcore
