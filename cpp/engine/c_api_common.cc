// The C API's shared parts: errors, version, handle registry.
#include <mutex>
#include <string>
#include <unordered_map>

#include "engine/c_api_internal.h"
#include "engine/version.h"

namespace mmcore::capi {

namespace {

thread_local std::string last_error;

std::mutex& registry_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::unordered_map<const void*, HandleKind>& registry() {
  static auto* handles = new std::unordered_map<const void*, HandleKind>();  // never destroyed
  return *handles;
}

void check_locked(const void* handle, HandleKind kind, const char* type_name) {
  if (handle == nullptr) {
    throw Error(MMCORE_ERROR_INVALID_HANDLE, std::string(type_name) + " handle is NULL");
  }
  auto it = registry().find(handle);
  if (it == registry().end() || it->second != kind) {
    throw Error(MMCORE_ERROR_INVALID_HANDLE,
                std::string("not a live ") + type_name + " handle (destroyed or of another type)");
  }
}

}  // namespace

void register_handle(const void* handle, HandleKind kind) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[handle] = kind;
}

void check_handle(const void* handle, HandleKind kind, const char* type_name) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  check_locked(handle, kind, type_name);
}

void unregister_handle(const void* handle, HandleKind kind, const char* type_name) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  check_locked(handle, kind, type_name);
  registry().erase(handle);
}

std::string to_string_arg(const char* text, const char* name) {
  require_pointer(text, name);
  return std::string(text);
}

Modality to_modality(int32_t value, const char* name) {
  if (value < MMCORE_MODALITY_IMAGE || value > MMCORE_MODALITY_AUDIO) {
    throw Error(MMCORE_ERROR_INVALID_ARGUMENT,
                std::string(name) + " " + std::to_string(value) + " is not a modality (0..2)");
  }
  return static_cast<Modality>(value);
}

std::vector<MMFeature> to_features(const mmcore_mm_feature* features, int32_t num_features) {
  require_array(features, num_features, "features");
  std::vector<MMFeature> out(static_cast<size_t>(num_features));
  for (int32_t i = 0; i < num_features; ++i) {
    const mmcore_mm_feature& in = features[i];
    MMFeature& f = out[static_cast<size_t>(i)];
    f.modality = to_modality(in.modality, "features[].modality");
    f.identifier = to_string_arg(in.identifier, "features[].identifier");
    f.offset = in.offset;
    f.length = in.length;
    f.num_embeds = in.num_embeds;
    if (in.embed_mask != nullptr) {
      if (in.length <= 0) {
        throw Error(MMCORE_ERROR_INVALID_ARGUMENT,
                    "item '" + f.identifier + "' has length " + std::to_string(in.length));
      }
      f.embed_mask.assign(in.embed_mask, in.embed_mask + in.length);
    }
  }
  return out;
}

mmcore_status fail(mmcore_status status, const char* message) {
  try {
    last_error = message;
  } catch (...) {
    // Keep the status even if the message cannot be stored.
  }
  return status;
}

}  // namespace mmcore::capi

extern "C" {

const char* mmcore_last_error_message(void) { return mmcore::capi::last_error.c_str(); }

const char* mmcore_status_name(mmcore_status status) {
  switch (status) {
    case MMCORE_OK:
      return "MMCORE_OK";
    case MMCORE_ERROR_INVALID_ARGUMENT:
      return "MMCORE_ERROR_INVALID_ARGUMENT";
    case MMCORE_ERROR_INVALID_HANDLE:
      return "MMCORE_ERROR_INVALID_HANDLE";
    case MMCORE_ERROR_NOT_FOUND:
      return "MMCORE_ERROR_NOT_FOUND";
    case MMCORE_ERROR_BAD_STATE:
      return "MMCORE_ERROR_BAD_STATE";
    case MMCORE_ERROR_OUT_OF_MEMORY:
      return "MMCORE_ERROR_OUT_OF_MEMORY";
    case MMCORE_ERROR_INTERNAL:
      return "MMCORE_ERROR_INTERNAL";
  }
  return "unknown status";
}

const char* mmcore_version_string(void) { return MMCORE_VERSION_STRING; }

int32_t mmcore_version_number(void) { return MMCORE_VERSION; }

}  // extern "C"
