#pragma once
#include <string>

namespace mmcore::kernels {

// Number of visible CUDA devices (0 when there is no driver or no card).
[[nodiscard]] int device_count();

// Runs out = a * x + y on the device from host arrays; returns "" or the CUDA error string.
[[nodiscard]] std::string probe_saxpy(int n, float a, const float* x_host, const float* y_host,
                                      float* out_host);

}  // namespace mmcore::kernels
