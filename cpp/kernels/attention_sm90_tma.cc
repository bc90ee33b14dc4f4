// Tensor maps of the Hopper attention kernel's Q / K / V (see attention_sm90_tma.h).
#include "kernels/attention_sm90_tma.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mmcore::kernels {
namespace {

// The driver's cuTensorMapEncodeTiled, found once through the runtime (no -lcuda link).
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &status) != cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// One operand's map: dims innermost first; strides in bytes of dims 1.. (multiples of 16). The
// box's rows are one shared-memory swizzle atom: 64 elements (128-byte swizzle) or 16 (32-byte).
bool encode(CUtensorMap& map, const void* base, int rank, const cuuint64_t* dims,
            const cuuint64_t* strides, const cuuint32_t* box) {
  auto fn = encode_tiled();
  if (fn == nullptr || reinterpret_cast<uintptr_t>(base) % 16 != 0) return false;
  if (box[0] != 64 && box[0] != 16) return false;
  const CUtensorMapSwizzle swizzle =
      box[0] == 64 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_32B;
  for (int i = 0; i + 1 < rank; ++i) {
    if (strides[i] % 16 != 0 || strides[i] >= (cuuint64_t{1} << 40)) return false;
  }
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  return fn(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, const_cast<void*>(base), dims, strides,
            box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

void make_sm90_kv_maps(const AttentionParams& p, bool paged, int head_dim, int box_cols,
                       int tile_keys, Sm90TensorMaps& maps) {
  maps.tma = false;
  constexpr int kBytes = 2;  // bf16 / f16: the map's element type only sets the element size
  const cuuint32_t cols = static_cast<cuuint32_t>(box_cols);
  bool ok = true;
  for (int operand = 0; operand < 2 && ok; ++operand) {
    const void* base = operand == 0 ? p.k : p.v;
    const int64_t s_block = operand == 0 ? p.k_stride_block : p.v_stride_block;
    const int64_t s_token = operand == 0 ? p.k_stride_token : p.v_stride_token;
    const int64_t s_head = operand == 0 ? p.k_stride_head : p.v_stride_head;
    CUtensorMap& map = operand == 0 ? maps.k : maps.v;
    if (paged) {
      // One lane issues each block's boxes. Blocks of >= 16 rows (those the GPU tests ran) start on
      // whole swizzle atoms in shared memory (the layout the swizzle is defined on); smaller ones
      // use cp.async, as block sizes that do not divide the tile do.
      if (p.num_cache_blocks <= 0 || p.block_size < 16 || p.block_size > 256 ||
          tile_keys % p.block_size != 0) {
        return;
      }
      const cuuint64_t dims[4] = {
          static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(p.num_kv_heads),
          static_cast<cuuint64_t>(p.block_size), static_cast<cuuint64_t>(p.num_cache_blocks)};
      const cuuint64_t strides[3] = {static_cast<cuuint64_t>(s_head * kBytes),
                                     static_cast<cuuint64_t>(s_token * kBytes),
                                     static_cast<cuuint64_t>(s_block * kBytes)};
      const cuuint32_t box[4] = {cols, 1, static_cast<cuuint32_t>(p.block_size), 1};
      ok = encode(map, base, 4, dims, strides, box);
    } else {
      const cuuint64_t dims[3] = {static_cast<cuuint64_t>(head_dim),
                                  static_cast<cuuint64_t>(p.num_kv_heads),
                                  static_cast<cuuint64_t>(p.num_tokens)};
      const cuuint64_t strides[2] = {static_cast<cuuint64_t>(s_head * kBytes),
                                     static_cast<cuuint64_t>(s_token * kBytes)};
      const cuuint32_t box[3] = {cols, 1, static_cast<cuuint32_t>(tile_keys)};
      ok = encode(map, base, 3, dims, strides, box);
    }
  }
  maps.tma = ok;
}

void make_sm90_q_map(const AttentionParams& p, int head_dim, int box_cols, int tile_rows,
                     Sm90TensorMaps& maps) {
  maps.tma_q = false;
  constexpr int kBytes = 2;
  if (p.group <= 0 || tile_rows % p.group != 0 || p.num_kv_heads * p.group != p.num_q_heads) {
    return;
  }
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(p.group),
                              static_cast<cuuint64_t>(p.num_kv_heads),
                              static_cast<cuuint64_t>(p.num_tokens)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(p.q_stride_head * kBytes),
                                 static_cast<cuuint64_t>(p.q_stride_head * p.group * kBytes),
                                 static_cast<cuuint64_t>(p.q_stride_token * kBytes)};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(p.group), 1,
                             static_cast<cuuint32_t>(tile_rows / p.group)};
  maps.tma_q = encode(maps.q, p.q, 4, dims, strides, box);
}

}  // namespace mmcore::kernels
