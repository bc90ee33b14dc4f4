// Tensor maps (TMA descriptors) of the K/V operands of the Hopper attention kernel: host code.
#pragma once
#include <cuda.h>

#include "kernels/attention_params.h"

namespace mmcore::kernels {

// What the kernel's producer reads K/V tiles with: bulk tensor copies (TMA) through these maps
// when `tma`, else per-thread cp.async. Passed by value as a __grid_constant__ kernel parameter.
struct Sm90KvMaps {
  CUtensorMap k;
  CUtensorMap v;
  bool tma = false;
};

// Fills `maps` for 16-bit K/V of head dim `head_dim` read in `tile_keys`-key tiles: paged caches
// ([blocks, block_size, Hkv, D], one box a block and column block; needs a block_size of at
// least 16 that divides tile_keys, and p.num_cache_blocks > 0) or packed rows ([T, Hkv, D], one
// box a tile and column block). Boxes are `box_cols` elements wide (64 or 16: 128- or 32-byte
// swizzled, as the kernel's shared-memory atoms); columns past the head dim read as zeros.
// Leaves maps.tma false (cp.async) when the layout does not allow it or the driver refuses.
void make_sm90_kv_maps(const AttentionParams& p, bool paged, int head_dim, int box_cols,
                       int tile_keys, Sm90KvMaps& maps);

}  // namespace mmcore::kernels
