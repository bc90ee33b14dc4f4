// Host-side helpers every kernel launcher shares: argument checks, the launch-error check and
// the dispatch from a DType code to the element type.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

inline void check_launch(cudaError_t err, const char* name) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(name) + ": CUDA error: " + cudaGetErrorString(err));
  }
}

// An on-by-default switch: false only when the environment variable is set to "0".
inline bool env_flag(const char* name) {
  const char* env = std::getenv(name);
  return env == nullptr || std::strcmp(env, "0") != 0;
}

// A property of the current CUDA device, computed by compute(device) once per device and kept in
// `cache` (one per property; 0 means not looked up yet); `fallback` when there is no device.
constexpr int kMaxCachedDevices = 64;
template <typename Compute>
int current_device_cached(int (&cache)[kMaxCachedDevices], int fallback, Compute compute) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxCachedDevices)
    return fallback;
  if (cache[device] == 0) cache[device] = compute(device);
  return cache[device];
}

// Multiprocessors of the current device, looked up once per device.
inline int current_device_sm_count() {
  static int sms[kMaxCachedDevices] = {};
  return current_device_cached(sms, 1, [](int device) {
    int count = 0;
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    return count > 0 ? count : 1;
  });
}

// Whether ptr is a multiple of `bytes` (a vector access of that size may use it).
inline bool aligned_to(const void* ptr, size_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}
inline bool aligned16(const void* ptr) { return aligned_to(ptr, 16); }

inline bool valid_dtype(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16;
}

// Names an element type without constructing one.
template <typename T>
struct TypeTag {
  using type = T;
};

// Returns launch(TypeTag<T>{}) for the element type T of `dtype` (float, __half or
// __nv_bfloat16); cudaErrorInvalidValue for any other code.
template <typename Launch>
cudaError_t dispatch_dtype(DType dtype, Launch&& launch) {
  switch (dtype) {
    case DType::kFloat32:
      return launch(TypeTag<float>{});
    case DType::kFloat16:
      return launch(TypeTag<__half>{});
    case DType::kBFloat16:
      return launch(TypeTag<__nv_bfloat16>{});
    default:
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace mmcore::kernels
