// Tensor maps (TMA descriptors) of the Q / K / V operands of the Hopper attention kernel: host
// code.
#pragma once
#include <cuda.h>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

// What the kernel's producer reads tiles with: bulk tensor copies (TMA) through these maps (K/V
// when `tma`, Q when `tma_q`), else per-thread cp.async. Passed by value as a __grid_constant__
// kernel parameter.
struct Sm90TensorMaps {
  CUtensorMap k;
  CUtensorMap v;
  CUtensorMap q;
  bool tma = false;
  bool tma_q = false;
};

// Fills `maps` for 16-bit K/V of head dim `head_dim` read in `tile_keys`-key tiles: paged caches
// ([blocks, block_size, Hkv, D], one box a block and column block; needs a block_size of at
// least 16 that divides tile_keys, and p.num_cache_blocks > 0) or packed rows ([T, Hkv, D], one
// box a tile and column block). Boxes are `box_cols` elements wide (64 or 16: 128- or 32-byte
// swizzled, as the kernel's shared-memory atoms); columns past the head dim read as zeros.
// Leaves maps.tma false (cp.async) when the layout does not allow it or the driver refuses.
void make_sm90_kv_maps(const AttentionParams& p, bool paged, int head_dim, int box_cols,
                       int tile_keys, Sm90TensorMaps& maps);

// Fills maps.q for 16-bit queries [T, Hq, D] read in row tiles of `tile_rows` rows, a row being
// (query token, query head of the KV head's group) with the head fastest: one box of
// (box_cols columns, group heads, tile_rows / group tokens) a column block, so the group must
// divide tile_rows. Tokens past the last read as zeros. Leaves maps.tma_q false (cp.async)
// otherwise, or when the driver refuses.
void make_sm90_q_map(const AttentionParams& p, int head_dim, int box_cols, int tile_rows,
                     Sm90TensorMaps& maps);

}  // namespace mmcore::kernels
