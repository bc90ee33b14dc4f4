// Host launch of attention_sm90_kernel for one head dim (included by attention_sm90_d*.cu).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/attention.h"
#include "kernels/attention_aux.cuh"
#include "kernels/attention_sm90.cuh"
#include "kernels/attention_sm90_tma.h"
#include "kernels/launch_utils.h"

namespace mmcore::kernels {

template <typename T, int kHeadDim, bool kPaged, bool kKvFp8 = false>
cudaError_t launch_attention_sm90_variant(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = Sm90AttentionConfig<T, kHeadDim, kKvFp8>;
  auto* kernel = attention_sm90_kernel<T, kHeadDim, kPaged, kKvFp8>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(Cfg::kSmemBytes));
  if (err != cudaSuccess) return err;
  int max_tiles = 0;  // the kernel always maps items through the prefix sums
  err = launch_row_tile_offsets(p, Cfg::kBlockM, stream, max_tiles, /*work_counter=*/true);
  if (err != cudaSuccess) return err;
  // Persistent CTAs, one an SM (its shared memory allows no second); with
  // MMCORE_SM90_PERSISTENT=0 one CTA an item instead (the grid the hardware schedules).
  static const bool persistent = env_flag("MMCORE_SM90_PERSISTENT");
  static const bool tma_allowed = env_flag("MMCORE_SM90_TMA");
  const int64_t items = static_cast<int64_t>(max_tiles) * p.num_kv_heads;
  const int64_t ctas = persistent ? std::min<int64_t>(items, current_device_sm_count()) : items;
  Sm90TensorMaps maps;
  if (tma_allowed) {
    // FP8 K/V go through the producer's conversion, never TMA (maps.tma stays false).
    if constexpr (!kKvFp8)
      make_sm90_kv_maps(p, kPaged, kHeadDim, Cfg::kAtomCols, Cfg::kBlockN, maps);
    make_sm90_q_map(p, kHeadDim, Cfg::kAtomCols, Cfg::kBlockM, maps);
  }
  kernel<<<static_cast<unsigned>(ctas), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(p, maps);
  return cudaGetLastError();
}

template <int kHeadDim>
cudaError_t run_attention_sm90(const AttentionParams& p, DType dtype, bool paged,
                               cudaStream_t stream) {
  // FP8 caches (paged only) at the head dims sm90_kv_fp8_head_dim names; no other instantiation.
  if constexpr (sm90_kv_fp8_head_dim(kHeadDim)) {
    if (p.kv_fp8 && paged && dtype == DType::kBFloat16)
      return launch_attention_sm90_variant<__nv_bfloat16, kHeadDim, true, true>(p, stream);
    if (p.kv_fp8 && paged && dtype == DType::kFloat16)
      return launch_attention_sm90_variant<__half, kHeadDim, true, true>(p, stream);
  }
  if (p.kv_fp8) return cudaErrorInvalidValue;
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
