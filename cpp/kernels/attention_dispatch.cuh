// Instantiates attention_kernel for one head dim over dtypes and variants, and launches it
// after the row-tile prefix sums. Included once per head dim by attention_d*.cu.
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention.h"
#include "kernels/attention_aux.cuh"
#include "kernels/attention_decode_fp8.cuh"
#include "kernels/attention_kernel.cuh"
#include "kernels/pdl.cuh"

namespace mmcore::kernels {

// Launches `kernel` (threads, shared memory and row-tile height as given) after the row-tile
// prefix sums, then the split combine where the kernel cannot merge its own splits.
template <typename T, int kHeadDim>
cudaError_t launch_attention_grid(void (*kernel)(AttentionParams), int threads, size_t smem_bytes,
                                  int block_m, const AttentionParams& p, cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes));
  if (err != cudaSuccess) return err;
  int max_tiles = p.num_seqs;  // one_tile_per_seq: CTA x is sequence x
  if (!p.one_tile_per_seq) {
    err = launch_row_tile_offsets(p, block_m, stream, max_tiles);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(max_tiles, p.num_kv_heads, p.num_splits);
  AttentionParams q = p;
  if (static_cast<int64_t>(max_tiles) * p.num_kv_heads > p.split_counter_capacity) {
    q.split_counters = nullptr;  // too few counters for this grid: the combine kernel merges
  }
  err = launch_pdl(kernel, grid, dim3(threads), smem_bytes, stream, q);
  if (err != cudaSuccess || p.num_splits == 1 || q.split_counters != nullptr) return err;
  combine_splits_kernel<T><<<dim3(p.num_tokens, p.num_q_heads), 128, 0, stream>>>(p, kHeadDim);
  return cudaGetLastError();
}

template <typename T, int kHeadDim, int kWarpsM, int kWarpsN, int kMFrags, bool kPaged,
          bool kFp8 = false>
cudaError_t launch_attention_variant(const AttentionParams& p, cudaStream_t stream) {
  using Cfg = AttentionConfig<T, kHeadDim, kWarpsM, kWarpsN, kMFrags, kFp8>;
  return launch_attention_grid<T, kHeadDim>(
      attention_kernel<T, kHeadDim, kWarpsM, kWarpsN, kMFrags, kPaged, kFp8>, Cfg::kThreads,
      Cfg::kSmemBytes, Cfg::kBlockM, p, stream);
}

// Warp layouts per head dim: head dim 256 holds one 16-row tile per warp (its O accumulators
// alone take 128 registers) and slices decode keys over 2 warps (32-key tiles).
template <int kHeadDim>
struct VariantShape {
  static constexpr int kPrefillMFrags = kHeadDim > 128 ? 1 : 2;
  static constexpr int kDecodeWarpsN = kHeadDim > 128 ? 2 : 4;
};

template <typename T, int kHeadDim, bool kFp8>
cudaError_t launch_paged_for_dtype(const AttentionParams& p, AttentionVariant variant,
                                   cudaStream_t stream) {
  using Shape = VariantShape<kHeadDim>;
  if constexpr (kFp8 && kHeadDim == 128) {
    // Head dim 128 over FP8 converts K/V in registers (attention_decode_fp8.cuh).
    if (variant == AttentionVariant::kPagedDecode) {
      using Cfg = DecodeFp8Config<Shape::kDecodeWarpsN>;
      return launch_attention_grid<T, kHeadDim>(
          attention_decode_fp8_kernel<T, Shape::kDecodeWarpsN>, Cfg::kThreads, Cfg::kSmemBytes,
          Cfg::kBlockM, p, stream);
    }
  }
  if (variant == AttentionVariant::kPagedDecode)
    return launch_attention_variant<T, kHeadDim, 1, Shape::kDecodeWarpsN, 1, true, kFp8>(p, stream);
  return launch_attention_variant<T, kHeadDim, 4, 1, Shape::kPrefillMFrags, true, kFp8>(p, stream);
}

template <typename T, int kHeadDim>
cudaError_t launch_for_dtype(const AttentionParams& p, AttentionVariant variant,
                             cudaStream_t stream) {
  switch (variant) {
    case AttentionVariant::kPagedDecode:
    case AttentionVariant::kPagedPrefill:
      return p.kv_fp8 ? launch_paged_for_dtype<T, kHeadDim, true>(p, variant, stream)
                      : launch_paged_for_dtype<T, kHeadDim, false>(p, variant, stream);
    case AttentionVariant::kPacked:
      return launch_attention_variant<T, kHeadDim, 4, 1, VariantShape<kHeadDim>::kPrefillMFrags,
                                      false>(p, stream);
  }
  return cudaErrorInvalidValue;
}

template <int kHeadDim>
cudaError_t run_attention(const AttentionParams& p, DType dtype, AttentionVariant variant,
                          cudaStream_t stream) {
  if (dtype == DType::kBFloat16)
    return launch_for_dtype<__nv_bfloat16, kHeadDim>(p, variant, stream);
  if (dtype == DType::kFloat16) return launch_for_dtype<__half, kHeadDim>(p, variant, stream);
  return cudaErrorInvalidValue;
}

}  // namespace mmcore::kernels
