#pragma once
// What the C API's source files share: the handle registry (a NULL, destroyed or wrong-type
// handle is an error, not undefined behaviour), the per-thread error message and the guard that
// turns every C++ exception into a status code.
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "c_api.h"
#include "types.h"

namespace mmcore::capi {

enum class HandleKind : uint8_t { kScheduler, kBlockManager, kEncoderCache, kExpandedPrompt };

// An exception carrying the status to return.
class Error : public std::runtime_error {
 public:
  Error(mmcore_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  [[nodiscard]] mmcore_status status() const { return status_; }

 private:
  mmcore_status status_;
};

void register_handle(const void* handle, HandleKind kind);
// Throws Error(INVALID_HANDLE) unless `handle` is live and of `kind`.
void check_handle(const void* handle, HandleKind kind, const char* type_name);
// Checks, then forgets the handle (the caller deletes it).
void unregister_handle(const void* handle, HandleKind kind, const char* type_name);

// Records `message` as this thread's last error and returns `status`.
mmcore_status fail(mmcore_status status, const char* message);

// Throws Error(INVALID_ARGUMENT) naming `name` when a required pointer is NULL.
inline void require_pointer(const void* pointer, const char* name) {
  if (pointer == nullptr)
    throw Error(MMCORE_ERROR_INVALID_ARGUMENT, std::string(name) + " is NULL");
}
// An array argument: (NULL, 0) is empty; a negative count or NULL with a count is an error.
inline void require_array(const void* pointer, int64_t count, const char* name) {
  if (count < 0) {
    throw Error(MMCORE_ERROR_INVALID_ARGUMENT, std::string(name) + " has a negative count");
  }
  if (count > 0 && pointer == nullptr) {
    throw Error(MMCORE_ERROR_INVALID_ARGUMENT,
                std::string(name) + " is NULL but its count is " + std::to_string(count));
  }
}

// A C string argument that must not be NULL.
std::string to_string_arg(const char* text, const char* name);
// A modality value in range.
Modality to_modality(int32_t value, const char* name);
// C features -> C++ features (identifier required; embed_mask NULL or `length` bytes).
std::vector<MMFeature> to_features(const mmcore_mm_feature* features, int32_t num_features);

// Runs `body`; maps exceptions to statuses (and this thread's message). Never throws.
template <typename Body>
mmcore_status guarded(Body&& body) noexcept {
  try {
    body();
    return MMCORE_OK;
  } catch (const Error& e) {
    return fail(e.status(), e.what());
  } catch (const std::out_of_range& e) {  // unknown ids in the C++ API
    return fail(MMCORE_ERROR_NOT_FOUND, e.what());
  } catch (const std::invalid_argument& e) {
    return fail(MMCORE_ERROR_INVALID_ARGUMENT, e.what());
  } catch (const std::logic_error& e) {  // calls out of order; broken invariants are mapped apart
    return fail(MMCORE_ERROR_BAD_STATE, e.what());
  } catch (const std::bad_alloc&) {
    return fail(MMCORE_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(MMCORE_ERROR_INTERNAL, e.what());
  } catch (...) {
    return fail(MMCORE_ERROR_INTERNAL, "unknown C++ exception");
  }
}

// Runs a check_invariants(): a broken invariant (std::logic_error) becomes Error(INTERNAL).
template <typename Check>
void invariants_as_internal(Check&& check) {
  try {
    check();
  } catch (const std::logic_error& e) {
    throw Error(MMCORE_ERROR_INTERNAL, e.what());
  }
}

}  // namespace mmcore::capi
