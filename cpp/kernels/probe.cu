// A minimal kernel that proves the CUDA module was built for this card and launches:
// writes out[i] = a * x[i] + y[i] on the device and returns the first CUDA error.
#include <cuda_runtime.h>

#include "kernels/probe.h"

namespace mmcore::kernels {
namespace {

__global__ void saxpy_kernel(int n, float a, const float* x, const float* y, float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a * x[i] + y[i];
}

}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

std::string probe_saxpy(int n, float a, const float* x_host, const float* y_host, float* out_host) {
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  float *x = nullptr, *y = nullptr, *out = nullptr;
  cudaError_t err = cudaMalloc(&x, bytes);
  if (err == cudaSuccess) err = cudaMalloc(&y, bytes);
  if (err == cudaSuccess) err = cudaMalloc(&out, bytes);
  if (err == cudaSuccess) err = cudaMemcpy(x, x_host, bytes, cudaMemcpyHostToDevice);
  if (err == cudaSuccess) err = cudaMemcpy(y, y_host, bytes, cudaMemcpyHostToDevice);
  if (err == cudaSuccess) {
    saxpy_kernel<<<(n + 255) / 256, 256>>>(n, a, x, y, out);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) err = cudaMemcpy(out_host, out, bytes, cudaMemcpyDeviceToHost);
  cudaFree(x);
  cudaFree(y);
  cudaFree(out);
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace mmcore::kernels
