// Prefill and packed (ViT) attention for Hopper (sm90a) on warpgroup MMAs (wgmma), through
// CuTe's GMMA atoms: S = Q K^T with both operands in shared memory, O += P V with P in registers
// (the S accumulators converted in place) and V read transposed from its K-major tile.
//
// Work items are row tiles of 128 rows of one sequence and one KV head, rows mapped to (query
// token, GQA head) as in attention_kernel. CTAs are persistent: each takes items in turn (heavy
// causal tiles first) from a counter until none are left, and the producer loads the next item's
// Q and first K/V tiles while the consumers finish the current one. A CTA runs three warpgroups:
// - a producer (registers handed to the others with setmaxnreg) loads each item's Q tile (TMA
//   by its first thread where the GQA group divides 128, else cp.async by all its threads) and
//   fills three stages of 128-key K/V tiles (48-key at head dim 256) in swizzled shared memory
//   (128-byte swizzle for head dims 64 / 128 / 256, 32-byte for 72 / 80): bulk tensor copies
//   (TMA) by its first warp, one box per cache block (paged) or per tile (packed) and column
//   block, where the layout allows it (attention_sm90_tma.h), else cp.async by all its threads;
//   mbarriers say when a stage is full and when both consumers are done with it;
// - two consumers of 64 rows each, software-pipelined (tile j's P V and tile j + 1's Q K^T in
//   flight during tile j + 1's softmax) and taking turns to issue their wgmmas (named
//   barriers), so one's softmax overlaps the other's GEMMs.
// FP8 (e4m3) paged caches (head dims 64 and 128, kKvFp8; 64-key tiles at 128): the producer's
// threads cp.async each K/V tile's bytes into a double-buffered staging area and convert them
// into the stage; k_scale / v_scale fold into each item's softmax scale and output.
// Masks (causal, sliding window, bidirectional image spans) and the online softmax (float32,
// log2 domain) match attention_kernel. Only the kernel body is sm90a code: other targets compile
// an empty kernel, and the host launches this one on compute capability 9.0 only.
#pragma once
#include <cuda_runtime.h>

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/numeric_conversion.h>
#include <cfloat>
#include <cstdint>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

#include "kernels/attention_config.cuh"
#include "kernels/attention_params.h"
#include "kernels/attention_sm90_tma.h"
#include "kernels/mma_utils.cuh"

namespace mmcore::kernels {

template <typename T>
struct CuteElement;
template <>
struct CuteElement<__nv_bfloat16> {
  using type = cute::bfloat16_t;
};
template <>
struct CuteElement<__half> {
  using type = cute::half_t;
};

template <typename T, int kHeadDim, bool kKvFp8 = false>
struct Sm90AttentionConfig {
  static_assert(kHeadDim == 64 || kHeadDim == 72 || kHeadDim == 80 || kHeadDim == 128 ||
                    kHeadDim == 256,
                "head dims 64, 72, 80, 128 and 256");
  using Element = typename CuteElement<T>::type;
  // wgmma k-steps are 16 wide: head dim 72 computes as 80, its extra Q / K / V columns zero
  // (they add nothing to the scores; the extra output columns are never written).
  static constexpr int kDim = (kHeadDim + 15) / 16 * 16;
  // Shared-memory rows in swizzle atoms of kAtomCols columns: 64 (128-byte swizzle) where the
  // dim is a multiple of 64, else 16 (32-byte swizzle); the TMA boxes have the atoms' width.
  static constexpr int kAtomCols = kDim % 64 == 0 ? 64 : 16;
  static constexpr int kBlockM = 128;  // two warpgroups of 64 rows
  // Keys per K/V tile: 128; 48 at head dim 256, where three stages of 128-key K and V tiles
  // (384 KB) cannot fit beside the 64 KB Q tile; 64 for FP8 K/V at head dim 128, where 128
  // would leave no room for the e4m3 staging.
  static constexpr int kBlockN = kDim > 128 ? 48 : kKvFp8 ? (kDim > 64 ? 64 : 128) : 128;
  static_assert(kBlockN % 16 == 0, "whole 16-key k-blocks of P V");
  static constexpr int kWarpGroups = kBlockM / 64;  // consumers: the MMAs and the softmax
  static constexpr int kConsumerThreads = 128 * kWarpGroups;
  static constexpr int kProducerThreads = 128;  // one warpgroup issues the copies
  static constexpr int kThreads = kConsumerThreads + kProducerThreads;
  // Registers a thread after setmaxnreg: the FP8 producer's gather and conversion spill at 56.
  static constexpr int kProducerRegs = kKvFp8 ? 72 : 56;
  static constexpr int kConsumerRegs = kKvFp8 ? 216 : 224;
  static_assert(kProducerThreads * kProducerRegs + kConsumerThreads * kConsumerRegs <= 65536,
                "register file");
  // K/V stages: tile j + 1's Q K^T is issued while tile j's P V still reads its stage, so the
  // load of tile j + 2 needs a third.
  static constexpr int kStages = 3;
  // Q tiles: the producer loads the next work item's while the consumers finish the current
  // one; two where they fit in shared memory (head dims up to 80), else one.
  static constexpr int kQStages = kDim <= 80 ? 2 : 1;
  using BlockM = cute::Int<kBlockM>;
  using BlockN = cute::Int<kBlockN>;
  using HeadDim = cute::Int<kDim>;
  using TileQK = cute::Shape<BlockM, BlockN, HeadDim>;
  using TilePV = cute::Shape<BlockM, HeadDim, BlockN>;
  using WarpGroups = cute::Layout<cute::Shape<cute::Int<kWarpGroups>, cute::_1, cute::_1>>;
  using TiledMmaQK = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float, TileQK>(), WarpGroups{}));
  using TiledMmaPV = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float, TilePV, cute::GMMA::Major::K,
                                 cute::GMMA::Major::MN>(),
      WarpGroups{}));
  // Rows swizzled in 8-row atoms: what wgmma reads without bank conflicts. Atoms tile the rows
  // first, so each kAtomCols-column block of a tile is contiguous (a TMA box's destination).
  using SmemAtom = std::conditional_t<kAtomCols == 64, cute::GMMA::Layout_K_SW128_Atom<Element>,
                                      cute::GMMA::Layout_K_SW32_Atom<Element>>;
  using SmemLayoutQ = decltype(cute::tile_to_shape(
      SmemAtom{}, cute::Shape<BlockM, HeadDim, cute::Int<kQStages>>{}));
  using SmemLayoutKV =
      decltype(cute::tile_to_shape(SmemAtom{}, cute::Shape<BlockN, HeadDim, cute::Int<kStages>>{}));
  // V as (head dim, keys, stage): the B operand of P V, head dim contiguous (MN-major).
  using SmemLayoutVt = decltype(cute::composition(
      SmemLayoutKV{}, cute::make_ordered_layout(cute::Shape<HeadDim, BlockN, cute::Int<kStages>>{},
                                                cute::Step<cute::_2, cute::_1, cute::_3>{})));
  // P (bf16/f16) in the register layout of wgmma's A operand: the S accumulators' value order
  // ((column pair, row half, 8-column block)) regrouped into 16-key k-blocks.
  using LayoutP = cute::Layout<
      cute::Shape<cute::Shape<cute::_2, cute::_2, cute::_2>, cute::_1, cute::Int<kBlockN / 16>>,
      cute::Stride<cute::Stride<cute::_1, cute::_2, cute::_4>, cute::_0, cute::_8>>;
  static constexpr int kQElems = cute::cosize_v<SmemLayoutQ>;
  static constexpr int kKVElems = cute::cosize_v<SmemLayoutKV>;
  // FP8: two buffers (the next tile's bytes land while the producer converts this one's) of a
  // K and a V tile of e4m3 bytes, rows of kDim bytes, after the V stages.
  static constexpr int kF8TileBytes = kBlockN * kDim;
  static constexpr int kF8Bytes = kKvFp8 ? 2 * 2 * kF8TileBytes : 0;
  // The Q and K/V stages, the mbarriers (full and empty per K/V stage and per Q stage), the
  // work items and their row tiles (one per Q stage; two items the producer passes between its
  // threads); swizzle atoms need 1024-byte alignment, which the kernel makes itself inside the
  // extra 1 KB.
  static constexpr size_t kSmemBytes =
      (kQElems + 2 * kKVElems) * sizeof(T) + 2 * (kStages + kQStages) * sizeof(uint64_t) +
      kF8Bytes + kQStages * sizeof(RowTile) + (kQStages + 2) * sizeof(int) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "beyond a Hopper CTA's 227 KB of shared memory");
};

__device__ __forceinline__ void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Keeps the compiler from moving this thread's plain memory accesses across it: CUTLASS's
// mbarrier arrive / wait asm has no memory clobber, and work items pass through plain stores.
__device__ __forceinline__ void compiler_fence() { asm volatile("" ::: "memory"); }

// Named barriers (ids 1-15; 0 is __syncthreads) over `threads` threads of the CTA.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Key tiles of `keys` keys. FP8 kernels divide inline: a second constant divisor of ceil_div in
// the translation unit (64-key tiles at head dim 128) would change the 16-bit kernels' code.
template <int kBlockN, bool kKvFp8>
__device__ __forceinline__ int key_tiles(int keys) {
  if constexpr (kKvFp8) return (max(keys, 0) + kBlockN - 1) / kBlockN;
  return ceil_div(max(keys, 0), kBlockN);
}

template <typename T, int kHeadDim, bool kPaged, bool kKvFp8 = false>
__global__ void __launch_bounds__(Sm90AttentionConfig<T, kHeadDim, kKvFp8>::kThreads, 1)
    attention_sm90_kernel(const AttentionParams p, const __grid_constant__ Sm90TensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace cute;
  using Cfg = Sm90AttentionConfig<T, kHeadDim, kKvFp8>;
  static_assert(kPaged || !kKvFp8, "FP8 K/V come from the paged cache only");
  static_assert(!kKvFp8 || kHeadDim == 64 || kHeadDim == 128, "FP8 K/V at head dims 64 and 128");
  using Element = typename Cfg::Element;
  constexpr int kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN, kStages = Cfg::kStages;
  constexpr int kDim = Cfg::kDim, kAtomCols = Cfg::kAtomCols;
  constexpr int kChunks = kDim / 8;          // 16-byte chunks of a (padded) row
  constexpr int kRealChunks = kHeadDim / 8;  // those holding data; the rest are zeros
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  unsigned char* smem = smem_raw + ((1024 - (raw_addr & 1023)) & 1023);
  Element* smem_q = reinterpret_cast<Element*>(smem);
  Element* smem_k = smem_q + Cfg::kQElems;
  Element* smem_v = smem_k + Cfg::kKVElems;
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Cfg::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Cfg::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(smem_v), typename Cfg::SmemLayoutVt{});
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Cfg::SmemLayoutKV{});  // (key, dim)
  // full[s]: stage s holds its tile (the producer's copies landed); empty[s]: both consumer
  // warpgroups are done reading it. q_full / q_empty the same for the Q stages; work[qs] is the
  // item whose Q sits in Q stage qs (-1: no more items) and tiles[qs] its row tile (located by
  // the producer; no rows when invalid), next_work the producer's hand-over.
  // FP8 only: the staging buffers of e4m3 bytes (kF8Bytes is 0 otherwise).
  uint8_t* f8_stage = reinterpret_cast<uint8_t*>(smem_v + Cfg::kKVElems);
  uint64_t* full = reinterpret_cast<uint64_t*>(f8_stage + Cfg::kF8Bytes);
  uint64_t* empty = full + kStages;
  uint64_t* q_full = empty + kStages;
  uint64_t* q_empty = q_full + Cfg::kQStages;
  RowTile* tiles = reinterpret_cast<RowTile*>(q_empty + Cfg::kQStages);
  int* work = reinterpret_cast<int*>(tiles + Cfg::kQStages);
  int* next_work = work + Cfg::kQStages;
  using Barrier = cutlass::arch::ClusterBarrier;

  const int group = p.group;
  const int tid = threadIdx.x, lane = tid % 32;
  const float scale_log2 = p.scale_log2;

  if (tid == 0) {
#pragma unroll
    for (int st = 0; st < kStages; ++st) {
      // TMA: one arrival (with the expected bytes) a stage; cp.async and FP8: one per producer
      // thread.
      Barrier::init(&full[st], !kKvFp8 && maps.tma ? 1 : Cfg::kProducerThreads);
      Barrier::init(&empty[st], Cfg::kConsumerThreads);
    }
#pragma unroll
    for (int qs = 0; qs < Cfg::kQStages; ++qs) {
      // TMA: thread 0's publication of the item, with the Q bytes to expect; cp.async: also each
      // producer thread's copies.
      Barrier::init(&q_full[qs], maps.tma_q ? 1 : Cfg::kProducerThreads + 1);
      Barrier::init(&q_empty[qs], Cfg::kConsumerThreads);
    }
  }
  __syncthreads();

  if (tid < Cfg::kProducerThreads) {
    // Producer warpgroup: per item, its Q tile (TMA by thread 0, or cp.async by all threads) and
    // publication, then its K/V tiles kStages deep by TMA (first warp) or cp.async (all threads);
    // each barrier completes when its copies land (the consumers fence before their wgmmas).
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    const int ptid = tid;
    const T* q_base = static_cast<const T*>(p.q);
    // cp.async path: each loader copies chunk column `ch` of every kRowsPerPass-th row of a K/V
    // tile. Where a pass spans whole swizzle phases (kPhaseRows), its rows are a multiple of 8
    // apart and share one phase: the shared-memory offsets are its first row's plus whole
    // swizzle atoms, computed once here rather than per copy. Head dim 256 has 4-row passes
    // (32 chunks a row): each copy's offset comes from the layout, in a loop left rolled.
    constexpr int kThreadRows = Cfg::kProducerThreads / kChunks;
    constexpr bool kPhaseRows = kThreadRows >= 8;
    constexpr int kRowsPerPass = kPhaseRows ? kThreadRows / 8 * 8 : kThreadRows;
    static_assert(kRowsPerPass >= 1 && kBlockN % kRowsPerPass == 0, "whole passes a tile");
    constexpr int kLoaders = kRowsPerPass * kChunks;  // the other producer threads only arrive
    static_assert(kPhaseRows || kLoaders == Cfg::kProducerThreads, "short passes use every thread");
    constexpr int kPasses = kBlockN / kRowsPerPass;
    const int load_ch = ptid % kChunks, load_r0 = ptid / kChunks;
    const uint32_t dst0 =
        static_cast<uint32_t>(raw_pointer_cast(&sK(load_r0, load_ch * 8, 0)) - smem_k);
    const uint32_t pass_stride =
        static_cast<uint32_t>(raw_pointer_cast(&sK(load_r0 + kRowsPerPass, load_ch * 8, 0)) -
                              raw_pointer_cast(&sK(load_r0, load_ch * 8, 0)));
    const uint32_t stage_stride =
        static_cast<uint32_t>(raw_pointer_cast(&sK(0, 0, 1)) - raw_pointer_cast(&sK(0, 0, 0)));
    const int block_size = kPaged ? p.block_size : kBlockN;
    const int blocks_per_tile = kBlockN / block_size;
    const uint64_t hint = static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_NORMAL);
    constexpr uint32_t kStageBytes = 2 * kBlockN * kDim * sizeof(T);  // zero fill counts too
    // FP8 path: each thread copies the 16-byte chunk column `f8_ch` (16 e4m3 values) of every
    // kF8RowsPerPass-th row of a tile into the staging buffer and converts those same chunks, so
    // its own cp.async wait orders the staging (no barrier). A chunk becomes two 8-column chunks
    // of the swizzled stage; its rows share one swizzle phase (kF8RowsPerPass is a multiple of 8).
    constexpr int kF8Chunks = kDim / 16;
    constexpr int kF8RowsPerPass = Cfg::kProducerThreads / kF8Chunks;
    constexpr int kF8Passes = kBlockN / kF8RowsPerPass;
    static_assert(!kKvFp8 || (kF8RowsPerPass % 8 == 0 && kBlockN % kF8RowsPerPass == 0),
                  "FP8 chunk rows");
    // Stages and passes move by whole swizzle atoms, so by constant offsets (kept out of the
    // CuTe address math, which the compiler would redo per tile).
    constexpr int kF8StageElems = kBlockN * kDim, kF8PassElems = kF8RowsPerPass * kAtomCols;
    static_assert(!kKvFp8 || Cfg::kKVElems == kStages * kF8StageElems, "stages of N x D");
    const int f8_ch = ptid % kF8Chunks, f8_r0 = ptid / kF8Chunks;
    const int f8_src0 = f8_r0 * kDim + f8_ch * 16;  // this thread's bytes in a staging tile
    const int f8_dst0 = static_cast<int>(raw_pointer_cast(&sK(f8_r0, f8_ch * 16, 0)) - smem_k);
    const int f8_hi = static_cast<int>(raw_pointer_cast(&sK(f8_r0, f8_ch * 16 + 8, 0)) -
                                       raw_pointer_cast(&sK(f8_r0, f8_ch * 16, 0)));

    // Items are (row tile, KV head) pairs of the prefix sums in p.tile_offsets, heavy (late)
    // causal tiles first; p.tile_offsets[num_seqs + 1] counts items claimed past the grid's first.
    const int total_tiles = p.tile_offsets[p.num_seqs];
    const int num_items = total_tiles * p.num_kv_heads;
    auto item_tile = [&](int w) {
      const int t = w / p.num_kv_heads;
      return p.causal ? total_tiles - 1 - t : t;
    };
    int kv_iter = 0;  // K/V tiles loaded so far, over all items
    int w = blockIdx.x;
    // Thread 0 claims items one ahead of the hand-over, so an atomic's latency hides behind a
    // whole item; a CTA's claims only grow, so none it holds at the end is below num_items.
    int claimed = ptid == 0 ? atomicAdd(&p.tile_offsets[p.num_seqs + 1], 1) + gridDim.x : 0;
    for (int item = 0;; ++item) {
      const int qs = item % Cfg::kQStages;
      if (item >= Cfg::kQStages) Barrier::wait(&q_empty[qs], ((item / Cfg::kQStages) - 1) & 1);
      RowTile rt;
      const int kv_head = w % p.num_kv_heads;
      const bool valid = w < num_items && locate_row_tile(p, item_tile(w), kBlockM, kBlockN, rt);
      if (valid && !maps.tma_q) {
        for (int c = ptid; c < kBlockM * kChunks; c += Cfg::kProducerThreads) {
          const int r = c / kChunks, ch = c % kChunks;
          const int row = rt.row0 + r;
          const bool inside = row < rt.num_rows && ch < kRealChunks;  // else zeros
          const T* src = q_base;
          if (inside) {
            src += (rt.q_start + row / group) * p.q_stride_token +
                   (kv_head * group + row % group) * p.q_stride_head + ch * 8;
          }
          cp_async_16(raw_pointer_cast(&sQ(r, ch * 8, qs)), src, inside);
        }
      }
      if (!maps.tma_q) cutlass::arch::cpasync_barrier_arrive_noinc(&q_full[qs]);
      if (w >= num_items) {
        if (ptid == 0) {
          work[qs] = -1;
          compiler_fence();
          Barrier::arrive(&q_full[qs]);  // publishes work[qs] (release; the consumers acquire)
        }
        break;
      }
      if (ptid == 0) {
        if (!valid) rt = RowTile{};  // no rows, no keys
        tiles[qs] = rt;
        work[qs] = w;
        compiler_fence();
        if (maps.tma_q && valid) {
          // One box a column block: the tile's tokens x the group's heads (rows past the
          // sequence's read other tokens or zeros; their outputs are never written).
          constexpr uint32_t kQBytes = kBlockM * kDim * sizeof(T);
          cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&q_full[qs], kQBytes);
          Element* q_dst = raw_pointer_cast(&sQ(0, 0, qs));
#pragma unroll
          for (int h = 0; h < kDim / kAtomCols; ++h) {
            SM90_TMA_LOAD_4D::copy(&maps.q, &q_full[qs], hint, q_dst + h * kBlockM * kAtomCols,
                                   h * kAtomCols, 0, kv_head, rt.q_start + rt.first_tok);
          }
        } else {
          Barrier::arrive(&q_full[qs]);
        }
        next_work[item & 1] = claimed;
        claimed = atomicAdd(&p.tile_offsets[p.num_seqs + 1], 1) + gridDim.x;
      }
      const int n_tiles = valid ? key_tiles<kBlockN, kKvFp8>(rt.kv_end - rt.kv_begin) : 0;

      if constexpr (kKvFp8) {
        const uint8_t* k_base =
            static_cast<const uint8_t*>(p.k) + kv_head * p.k_stride_head + f8_ch * 16;
        const uint8_t* v_base =
            static_cast<const uint8_t*>(p.v) + kv_head * p.v_stride_head + f8_ch * 16;
        const int32_t* table = p.block_tables + rt.seq * p.block_table_stride;
        // Tile t's e4m3 bytes into staging buffer (kv_iter + t) % 2, one commit group a tile.
        auto stage_bytes = [&](int t) {
          const int n0 = rt.kv_begin + t * kBlockN;
          uint8_t* dst = f8_stage + ((kv_iter + t) & 1) * 2 * Cfg::kF8TileBytes + f8_src0;
#pragma unroll
          for (int i = 0; i < kF8Passes; ++i) {
            const int key = n0 + f8_r0 + i * kF8RowsPerPass;
            const bool inside = key < rt.kv_end && key >= rt.kv_lo;
            const uint8_t* k_src = k_base;
            const uint8_t* v_src = v_base;
            if (inside) {
              const int block_idx = p.block_shift >= 0 ? key >> p.block_shift : key / p.block_size;
              const int in_block = key - block_idx * p.block_size;
              const int64_t block = table[block_idx];
              k_src += block * p.k_stride_block + in_block * p.k_stride_token;
              v_src += block * p.v_stride_block + in_block * p.v_stride_token;
            }
            cp_async_16(dst + i * kF8RowsPerPass * kDim, k_src, inside);
            cp_async_16(dst + Cfg::kF8TileBytes + i * kF8RowsPerPass * kDim, v_src, inside);
          }
          cp_async_commit();
        };
        if (n_tiles > 0) stage_bytes(0);
        for (int t = 0; t < n_tiles; ++t) {
          const int g = kv_iter + t, st = g % kStages;
          // The next tile's bytes fly while this one converts.
          if (t + 1 < n_tiles) {
            stage_bytes(t + 1);
            cp_async_wait<1>();
          } else {
            cp_async_wait<0>();
          }
          if (g >= kStages) Barrier::wait(&empty[st], ((g / kStages) - 1) & 1);
          compiler_fence();  // the waits' asm has no memory clobber
          const uint8_t* src = f8_stage + (g & 1) * 2 * Cfg::kF8TileBytes + f8_src0;
          Element* k_dst = smem_k + st * kF8StageElems + f8_dst0;
          Element* v_dst = smem_v + st * kF8StageElems + f8_dst0;
#pragma unroll
          for (int i = 0; i < kF8Passes; ++i) {
            const uint4 kb = *reinterpret_cast<const uint4*>(src + i * kF8RowsPerPass * kDim);
            const uint4 vb = *reinterpret_cast<const uint4*>(src + Cfg::kF8TileBytes +
                                                             i * kF8RowsPerPass * kDim);
            Element* kd = k_dst + i * kF8PassElems;
            Element* vd = v_dst + i * kF8PassElems;
            *reinterpret_cast<uint4*>(kd) = fp8x8_to<T>(make_uint2(kb.x, kb.y));
            *reinterpret_cast<uint4*>(kd + f8_hi) = fp8x8_to<T>(make_uint2(kb.z, kb.w));
            *reinterpret_cast<uint4*>(vd) = fp8x8_to<T>(make_uint2(vb.x, vb.y));
            *reinterpret_cast<uint4*>(vd + f8_hi) = fp8x8_to<T>(make_uint2(vb.z, vb.w));
          }
          // The generic-proxy stores become visible to the consumers' wgmmas (async proxy).
          fence_async_shared();
          Barrier::arrive(&full[st]);
        }
      } else if (maps.tma) {
        // Bulk tensor copies by the first warp: paged, lane b copies the tile's block b (blocks
        // outside the key range read block -1: zeros, no block-table entry needed); packed, lane 0
        // copies the tile's rows. Each box is one swizzle atom (kAtomCols columns) wide.
        const int32_t* table = kPaged ? p.block_tables + rt.seq * p.block_table_stride : nullptr;
        for (int t = 0; t < n_tiles && ptid < 32; ++t) {
          const int g = kv_iter + t, st = g % kStages;
          if (g >= kStages) Barrier::wait(&empty[st], ((g / kStages) - 1) & 1);
          if (lane == 0)
            cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(&full[st], kStageBytes);
          __syncwarp();
          const int n0 = rt.kv_begin + t * kBlockN;
          if (lane < blocks_per_tile) {
            const int key0 = n0 + lane * block_size;
            Element* k_dst = smem_k + st * stage_stride + lane * block_size * kAtomCols;
            Element* v_dst = smem_v + st * stage_stride + lane * block_size * kAtomCols;
#pragma unroll
            for (int h = 0; h < kDim / kAtomCols; ++h) {
              if constexpr (kPaged) {
                const bool inside = key0 < rt.kv_end && key0 + block_size > rt.kv_lo;
                const int block = inside ? table[key0 / block_size] : -1;
                SM90_TMA_LOAD_4D::copy(&maps.k, &full[st], hint, k_dst + h * kBlockN * kAtomCols,
                                       h * kAtomCols, kv_head, 0, block);
                SM90_TMA_LOAD_4D::copy(&maps.v, &full[st], hint, v_dst + h * kBlockN * kAtomCols,
                                       h * kAtomCols, kv_head, 0, block);
              } else {
                SM90_TMA_LOAD_3D::copy(&maps.k, &full[st], hint, k_dst + h * kBlockN * kAtomCols,
                                       h * kAtomCols, kv_head, rt.q_start + n0);
                SM90_TMA_LOAD_3D::copy(&maps.v, &full[st], hint, v_dst + h * kBlockN * kAtomCols,
                                       h * kAtomCols, kv_head, rt.q_start + n0);
              }
            }
          }
        }
      } else {
        const T* k_base = static_cast<const T*>(p.k) + kv_head * p.k_stride_head + load_ch * 8;
        const T* v_base = static_cast<const T*>(p.v) + kv_head * p.v_stride_head + load_ch * 8;
        const int32_t* table = kPaged ? p.block_tables + rt.seq * p.block_table_stride : nullptr;
        for (int t = 0; t < n_tiles; ++t) {
          const int g = kv_iter + t, st = g % kStages;
          if (g >= kStages) Barrier::wait(&empty[st], ((g / kStages) - 1) & 1);
          const int n0 = rt.kv_begin + t * kBlockN;
          const uint32_t dst = dst0 + st * stage_stride;
          // Pass i: this loader's chunk of row load_r0 + i * kRowsPerPass, into k_dst / v_dst.
          auto copy_pass = [&](int i, Element* k_dst, Element* v_dst) {
            const int key = n0 + load_r0 + i * kRowsPerPass;
            const bool inside = key < rt.kv_end && key >= rt.kv_lo && load_ch < kRealChunks;
            const T* k_src = k_base;
            const T* v_src = v_base;
            if (inside) {
              if constexpr (kPaged) {
                const int block_idx =
                    p.block_shift >= 0 ? key >> p.block_shift : key / p.block_size;
                const int in_block = key - block_idx * p.block_size;
                const int64_t block = table[block_idx];
                k_src += block * p.k_stride_block + in_block * p.k_stride_token;
                v_src += block * p.v_stride_block + in_block * p.v_stride_token;
              } else {
                k_src += static_cast<int64_t>(rt.q_start + key) * p.k_stride_token;
                v_src += static_cast<int64_t>(rt.q_start + key) * p.v_stride_token;
              }
            }
            cp_async_16(k_dst, k_src, inside);
            cp_async_16(v_dst, v_src, inside);
          };
          if constexpr (kPhaseRows) {
#pragma unroll
            for (int i = 0; i < kPasses && ptid < kLoaders; ++i)
              copy_pass(i, smem_k + dst + i * pass_stride, smem_v + dst + i * pass_stride);
          } else {
#pragma unroll 1
            for (int i = 0; i < kPasses; ++i) {  // every producer thread loads (kLoaders)
              Element* k_dst = raw_pointer_cast(&sK(load_r0 + i * kRowsPerPass, load_ch * 8, st));
              copy_pass(i, k_dst, smem_v + (k_dst - smem_k));
            }
          }
          // full[st] completes when every producer thread's copies so far have landed.
          cutlass::arch::cpasync_barrier_arrive_noinc(&full[st]);
        }
      }
      kv_iter += n_tiles;
      // Thread 0's claim reaches the others (next_work alternates: a slow reader of this item's
      // slot is past this barrier before thread 0 writes that slot again).
      named_barrier_sync(3, Cfg::kProducerThreads);
      w = next_work[item & 1];
    }
    cp_async_wait<0>();
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kConsumerRegs>();
    const int ctid = tid - Cfg::kProducerThreads;
    // Ping-pong: the two consumer warpgroups take turns issuing their wgmmas (named barriers 1
    // and 2), so one warpgroup's softmax runs while the other's GEMMs hold the tensor cores.
    // Warpgroup 0 goes first and each hands over after every issue, across items too (so
    // warpgroup 0 starts an item's Q K^T while warpgroup 1 still writes its outputs); warpgroup
    // 0 takes the last hand-over when the items run out.
    const int cw = ctid / 128;
    auto wait_turn = [&] { named_barrier_sync(1 + cw, Cfg::kConsumerThreads); };
    auto pass_turn = [&] { named_barrier_arrive(2 - cw, Cfg::kConsumerThreads); };
    if (cw == 1) pass_turn();
    typename Cfg::TiledMmaQK mma_qk;
    typename Cfg::TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(ctid);
    auto thr_pv = mma_pv.get_thread_slice(ctid);
    Tensor tSrQ = thr_qk.partition_fragment_A(sQ);    // (MMA, MMA_M, MMA_K, Q stage)
    Tensor tSrK = thr_qk.partition_fragment_B(sK);    // (MMA, MMA_N, MMA_K, stage)
    Tensor tOrVt = thr_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)
    Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kDim>>{});
    Tensor tOrP = make_tensor<Element>(typename Cfg::LayoutP{});
    static_assert(decltype(size(tSrS))::value == kBlockN / 2, "64 x kBlockN accumulators a WG");
    static_assert(decltype(size(tOrP))::value == kBlockN / 2, "P holds S's values");

    // This thread's rows: h = 0 / 1 at 8 apart within its warp's 16 of its warpgroup's 64.
    const int thread_row0 = (ctid / 128) * 64 + ((ctid % 128) / 32) * 16 + lane / 4;
    int kv_iter = 0;  // K/V tiles consumed so far, over all items
    for (int item = 0;; ++item) {
      const int qs = item % Cfg::kQStages;
      Barrier::wait(&q_full[qs], (item / Cfg::kQStages) & 1);
      compiler_fence();
      const int w = work[qs];
      if (w < 0) {
        if (cw == 0) wait_turn();  // warpgroup 1's last hand-over
        break;
      }
      // The row tile stays in shared memory (the rarely masked tiles read it there), except
      // what the loop and the output need.
      const RowTile& rt = tiles[qs];
      const int kv_begin = rt.kv_begin, min_hi = rt.min_hi, max_lo = rt.max_lo;
      const int n_tiles = key_tiles<kBlockN, kKvFp8>(rt.kv_end - kv_begin);
      float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
      // FP8: the KV head's scales fold into the softmax scale (K) and the output (V).
      float qk_scale_log2 = scale_log2, out_scale = 1.f;
      if constexpr (kKvFp8) {
        qk_scale_log2 *= p.k_scale[w % p.num_kv_heads];
        out_scale = p.v_scale[w % p.num_kv_heads];
      }
      clear(tOrO);
      auto stage_of = [&](int j) { return (kv_iter + j) % kStages; };
      auto phase_of = [&](int j) { return ((kv_iter + j) / kStages) & 1; };

      auto issue_qk = [&](int stage) {  // S = Q K^T of the tile in `stage`, asynchronously
        warpgroup_fence_operand(tSrS);
        warpgroup_arrive();
        mma_qk.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
        for (int k = 0; k < size<2>(tSrQ); ++k) {
          gemm(mma_qk, tSrQ(_, _, k, qs), tSrK(_, _, k, stage), tSrS);
          mma_qk.accumulate_ = GMMA::ScaleOut::One;
        }
        warpgroup_commit_batch();
      };
      auto issue_pv = [&](int stage) {  // O += P V of the tile in `stage`, asynchronously
        warpgroup_fence_operand(tOrP);
        warpgroup_fence_operand(tOrO);
        warpgroup_arrive();
#pragma unroll
        for (int k = 0; k < size<2>(tOrP); ++k)
          gemm(mma_pv, tOrP(_, _, k), tOrVt(_, _, k, stage), tOrO);
        warpgroup_commit_batch();
      };
      // Masks tile j's scores and folds them into the running softmax: S holds 2^(s - m) after,
      // alpha the factor that rescales the outputs of earlier tiles.
      auto softmax_tile = [&](int j, float(&alpha)[2]) {
        const int n0 = kv_begin + j * kBlockN;
        if (n0 + kBlockN > min_hi || n0 < max_lo) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const KeyRange keys = row_key_range(p, rt.row0 + thread_row0 + 8 * h, group, rt.context,
                                                rt.q_start, rt.num_rows, rt.kv_end, rt.spans);
#pragma unroll
            for (int i = 0; i < size(tSrS); ++i) {
              if (((i >> 1) & 1) != h) continue;
              const int key = n0 + 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
              if (key >= keys.hi || key < keys.lo) tSrS(i) = -INFINITY;
            }
          }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float mx = -INFINITY;
#pragma unroll
          for (int i = 0; i < size(tSrS); ++i) {
            if (((i >> 1) & 1) == h) mx = fmaxf(mx, tSrS(i));
          }
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
          const float m_new = fmaxf(m_run[h], mx * qk_scale_log2);
          const float m_use = m_new == -INFINITY ? 0.f : m_new;
          alpha[h] = fast_exp2(m_run[h] - m_use);
          float sum = 0.f;
#pragma unroll
          for (int i = 0; i < size(tSrS); ++i) {
            if (((i >> 1) & 1) != h) continue;
            tSrS(i) = fast_exp2(fmaf(tSrS(i), qk_scale_log2, -m_use));
            sum += tSrS(i);
          }
          l_run[h] = l_run[h] * alpha[h] + sum;
          m_run[h] = m_new;
        }
      };
      // The fences pin the conversion (and the O rescale before it) ahead of the next wgmma
      // issue: defined inside a wgmma batch, those registers would make ptxas serialize it.
      auto scores_to_p = [&] {
        constexpr int kN = decltype(size(tSrS))::value;
        using Converter = cutlass::NumericArrayConverter<Element, float, kN>;  // paired
        *reinterpret_cast<cutlass::Array<Element, kN>*>(raw_pointer_cast(tOrP.data())) =
            Converter{}(
                *reinterpret_cast<const cutlass::Array<float, kN>*>(raw_pointer_cast(tSrS.data())));
        warpgroup_fence_operand(tOrP);
        warpgroup_fence_operand(tOrO);
      };

      // A TMA box copies a whole cache block (paged) or tile (packed): the last tile's rows past
      // kv_end hold a former owner's rows or the next sequence's. Their P is 0, but 0 x NaN / Inf
      // is not, so each consumer warpgroup zeroes them in V (both write the same zeros, the only
      // writers while the stage is full) and fences; the turn's bar.sync then orders the
      // warpgroup's stores before its last P V. Paged blocks wholly past kv_end came in as zeros
      // (block -1), as did every row past kv_end on the cp.async and FP8 paths.
      auto zero_rows_past_end = [&](int j, int end) {
        const int n0 = kv_begin + j * kBlockN;
        int stale_end = n0 + kBlockN;
        if constexpr (kPaged) {
          stale_end = min(stale_end, (end + p.block_size - 1) / p.block_size * p.block_size);
        }
        const int rows = stale_end - end;
        if (rows <= 0) return;
        const int first = end - n0, st = stage_of(j);
        for (int c = ctid % 128; c < rows * kChunks; c += 128) {
          Element* dst = raw_pointer_cast(&sV(first + c / kChunks, c % kChunks * 8, st));
          *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
        }
        fence_async_shared();
      };

      // Software pipeline: while tile j's P V and tile j + 1's Q K^T run on the tensor cores,
      // the softmax of tile j + 1 waits only for the latter. The last tile is peeled off: a Q K^T
      // issued under a condition inside the batch would make ptxas merge accumulator registers
      // there and serialize the wgmmas.
      if (n_tiles > 0) {
        Barrier::wait(&full[stage_of(0)], phase_of(0));
        fence_async_shared();  // cp.async wrote Q (and maybe K/V) through the generic proxy
        wait_turn();
        issue_qk(stage_of(0));
        pass_turn();
        warpgroup_wait<0>();
        warpgroup_fence_operand(tSrS);
        float alpha[2];
        softmax_tile(0, alpha);  // O is still zero: nothing to rescale
        scores_to_p();
      }
      for (int j = 0; j + 1 < n_tiles; ++j) {
        Barrier::wait(&full[stage_of(j + 1)], phase_of(j + 1));
        fence_async_shared();
        wait_turn();
        issue_qk(stage_of(j + 1));
        issue_pv(stage_of(j));
        pass_turn();
        warpgroup_wait<1>();  // Q K^T of tile j + 1 (committed before P V of tile j)
        warpgroup_fence_operand(tSrS);
        float alpha[2];
        softmax_tile(j + 1, alpha);
        warpgroup_wait<0>();
        warpgroup_fence_operand(tOrO);
        Barrier::arrive(&empty[stage_of(j)]);  // tile j's K and V are read
        // Rescale O only when some row's running max moved (rare once the maxima settle).
        if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
          for (int i = 0; i < size(tOrO); ++i) tOrO(i) *= alpha[(i >> 1) & 1];
        }
        scores_to_p();
      }
      // Every Q K^T of the item is done: the producer may load the next item's Q (and row tile)
      // into this stage now.
      const int row0 = rt.row0, q_start = rt.q_start, num_rows = rt.num_rows;
      const int kv_end = rt.kv_end;
      compiler_fence();
      Barrier::arrive(&q_empty[qs]);
      if (n_tiles > 0) {
        if constexpr (!kKvFp8) {
          if (maps.tma) zero_rows_past_end(n_tiles - 1, kv_end);
        }
        wait_turn();
        issue_pv(stage_of(n_tiles - 1));
        pass_turn();
        warpgroup_wait<0>();
        warpgroup_fence_operand(tOrO);
        Barrier::arrive(&empty[stage_of(n_tiles - 1)]);
      }
      kv_iter += n_tiles;

#pragma unroll
      for (int h = 0; h < 2; ++h) {
        l_run[h] += __shfl_xor_sync(0xffffffff, l_run[h], 1);
        l_run[h] += __shfl_xor_sync(0xffffffff, l_run[h], 2);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + thread_row0 + 8 * h;
        if (row >= num_rows) continue;
        const int token = q_start + row / group;
        const int head = w % p.num_kv_heads * group + row % group;
        float inv = l_run[h] > 0.f ? 1.f / l_run[h] : 0.f;
        if constexpr (kKvFp8) inv *= out_scale;
        T* dst = static_cast<T*>(p.out) + token * p.out_stride_token + head * p.out_stride_head;
#pragma unroll
        for (int i = 0; i < size(tOrO); i += 2) {
          if (((i >> 1) & 1) != h || 8 * (i >> 2) >= kHeadDim) continue;  // padding columns
          const int d = 8 * (i >> 2) + 2 * (lane % 4);
          *reinterpret_cast<uint32_t*>(dst + d) = pack2<T>(tOrO(i) * inv, tOrO(i + 1) * inv);
        }
      }
    }
  }
#endif
}

}  // namespace mmcore::kernels
