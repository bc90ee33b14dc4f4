// Programmatic dependent launch (sm_90+; MMCORE_PDL=0 turns it off): a kernel launched with
// launch_pdl may then start while the previous kernel in its stream is still running; its CTAs
// pdl_wait() until that kernel has completed and its writes are visible, then
// pdl_launch_dependents() to let the next kernel start the same way. Between the small kernels
// of a decode step (add + RMSNorm, rope + KV write, attention, SiLU-and-mul) and before the dense
// GEMV (which warms the L2 with its first weight rows meanwhile) that hides each launch's latency
// and ramp. Every CTA of such a kernel calls pdl_wait() before it reads another kernel's output
// or exits, so completion stays transitive along the stream; kernels launched normally (cuBLAS,
// torch) wait for the whole previous kernel as usual. On an H200 it took LLaVA-1.5-7B's batch-1
// ITL from 4.25 to 4.07-4.09 ms (bench/RESULTS.md, session 16); without it the device-side calls
// are no-ops.
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernels/launch_utils.h"

namespace mmcore::kernels {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launches on the current device use programmatic dependent launch (compute capability
// 9.0+ unless MMCORE_PDL=0).
inline bool pdl_enabled() {
  static int cache[kMaxCachedDevices] = {};
  return current_device_cached(cache, 1, [](int device) {
           const char* env = std::getenv("MMCORE_PDL");
           int major = 0;
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
           return major >= 9 && (env == nullptr || std::strcmp(env, "0") != 0) ? 2 : 1;
         }) == 2;
}

// kernel<<<grid, block, smem, stream>>>(args...), as a programmatic dependent launch where
// pdl_enabled(); returns the launch error.
template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                       cudaStream_t stream, Args&&... args) {
  if (!pdl_enabled()) {
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    return cudaGetLastError();
  }
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace mmcore::kernels
