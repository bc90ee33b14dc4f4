// Host launch of attention_sm90_kernel for one head dim (included by attention_sm90_d*.cu).
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "kernels/attention.h"
#include "kernels/attention_aux.cuh"
#include "kernels/attention_sm90.cuh"
#include "kernels/attention_sm90_tma.h"

namespace mmcore::kernels {

template <typename T, int kHeadDim, bool kPaged>
cudaError_t launch_attention_sm90_variant(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = Sm90AttentionConfig<T, kHeadDim>;
  auto* kernel = attention_sm90_kernel<T, kHeadDim, kPaged>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(Cfg::kSmemBytes));
  if (err != cudaSuccess) return err;
  int max_tiles = 0;  // the kernel always maps CTAs through the prefix sums
  err = launch_row_tile_offsets(p, Cfg::kBlockM, stream, max_tiles);
  if (err != cudaSuccess) return err;
  const dim3 grid(max_tiles, p.num_kv_heads, 1);
  Sm90KvMaps maps;
  static const bool tma_allowed = [] {
    const char* env = std::getenv("MMCORE_SM90_TMA");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  if (tma_allowed) make_sm90_kv_maps(p, kPaged, kHeadDim, Cfg::kBlockN, maps);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, maps);
  return cudaGetLastError();
}

template <int kHeadDim>
cudaError_t run_attention_sm90(const AttentionParams& p, DType dtype, bool paged,
                               cudaStream_t stream) {
  if (dtype == DType::kBFloat16) {
    return paged ? launch_attention_sm90_variant<__nv_bfloat16, kHeadDim, true>(p, stream)
                 : launch_attention_sm90_variant<__nv_bfloat16, kHeadDim, false>(p, stream);
  }
  if (dtype == DType::kFloat16) {
    return paged ? launch_attention_sm90_variant<__half, kHeadDim, true>(p, stream)
                 : launch_attention_sm90_variant<__half, kHeadDim, false>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mmcore::kernels
