// All-reduce over peer-mapped GPU memory fused with the residual add and RMSNorm that follow a
// tensor-parallel row-parallel linear: one launch where there were two (and two round trips).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/norm.h"

namespace mmcore::kernels {

// Blocks of every launch: fixed, so that a block always stages and reads the same rows and its
// call counter and signals pair with the same block of every peer.
inline constexpr int kPeerNormBlocks = 32;

struct PeerAddRmsNormParams {
  // The fused add + norm's rows (norm.h): x holds this rank's partial sums, summed receives
  // residual + (sum of every rank's x).
  RmsNormParams norm;
  // Peer memory (PyTorch symmetric memory): device arrays of world_size pointers each.
  // Each rank's staging buffer: 2 halves x world_size slots (one per sending rank) of
  // half_elems elements each.
  void* const* buffers = nullptr;
  uint32_t* const* signal_pads = nullptr;  // each rank's signal pad (kPeerNormBlocks * world)
  int64_t buffer_offset = 0;               // bytes from each buffer pointer to the staging area
  int64_t half_elems = 0;                  // capacity of one slot, elements of the dtype
  uint32_t* call_counters = nullptr;       // [kPeerNormBlocks] on this rank, zero at start
  int rank = 0, world_size = 0;
};

// summed = residual + round(sum over ranks of x); out = round(weight * round(summed * rsqrt(
// mean(summed^2) + eps))) (as launch_fused_add_rms_norm). Every rank must launch it with the
// same num_tokens, in the same order with its other launches of this kind. Throws
// std::invalid_argument on bad arguments, std::runtime_error on a CUDA error.
void launch_peer_add_rms_norm(const PeerAddRmsNormParams& p, DType dtype, cudaStream_t stream);

}  // namespace mmcore::kernels
