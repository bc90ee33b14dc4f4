// One-shot all-reduce + residual add + RMSNorm over peer-mapped buffers. Block b handles rows
// b, b + kPeerNormBlocks, ...: it pushes this rank's partial rows into its slot of every rank's
// staging buffer (NVLink stores, no round trip), signals block b of every peer with the call's
// epoch (a release store) and waits for theirs (an acquire load), then reads all slots from its
// own buffer, sums them in rank order (every rank gets the same bits), adds the residual and
// normalizes. Staging alternates between two halves by a per-block call counter kept on the
// device (so CUDA-graph replays advance it too; it is also the epoch): a block writes into a
// half again only two calls later, after the barrier of the call in between, which each peer
// reaches only once it has read that half.
#include <cuda/atomic>

#include <cstring>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/elementwise_utils.cuh"
#include "kernels/peer_norm.h"

namespace mmcore::kernels {
namespace {

// Block-level barrier with the same block of every rank. Thread t stores this call's epoch into
// rank t's pad (slot [block][rank]) and waits until its own slot [block][t] has reached it. The
// release store orders every staged row of the block (stores to peer memory included) before
// the signal; the acquire load orders the peer's rows before this block's reads.
__device__ __forceinline__ void barrier_with_peers(uint32_t* const* pads, int rank, int world,
                                                   uint32_t epoch) {
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < world) {
    const int peer = threadIdx.x;
    cuda::atomic_ref<uint32_t, cuda::thread_scope_system> give(
        pads[peer][blockIdx.x * world + rank]);
    cuda::atomic_ref<uint32_t, cuda::thread_scope_system> take(
        pads[rank][blockIdx.x * world + peer]);
    give.store(epoch, cuda::std::memory_order_release);
    // A peer may already be one call further (epoch + 1): "reached", not "equal".
    while (static_cast<int32_t>(take.load(cuda::std::memory_order_acquire) - epoch) < 0) {
    }
  }
  __syncthreads();
}

// 16 bytes from the staging buffer, past L1 (peers write it between this block's reads).
template <typename V>
__device__ __forceinline__ V load_staged(const V* ptr) {
  static_assert(sizeof(V) == 16, "16-byte vectors");
  const uint4 raw = __ldcg(reinterpret_cast<const uint4*>(ptr));
  V v;
  memcpy(&v, &raw, sizeof(V));
  return v;
}

template <typename T, int kWidth>
__global__ void __launch_bounds__(1024)
    peer_add_rms_norm_kernel(const PeerAddRmsNormParams p, float inv_hidden) {
  using V = Vec<T, kWidth>;
  const int num_vecs = p.norm.hidden / kWidth;
  __shared__ uint32_t calls;
  if (threadIdx.x == 0) calls = p.call_counters[blockIdx.x];
  __syncthreads();
  // Rank r's slot of this call's half in the buffer of `owner`.
  const int64_t half = static_cast<int64_t>(calls & 1u) * p.world_size * p.half_elems;
  auto slot = [&](int owner, int r) {
    char* base = static_cast<char*>(p.buffers[owner]) + p.buffer_offset;
    return reinterpret_cast<V*>(reinterpret_cast<T*>(base) + half + r * p.half_elems);
  };

  // 1. Push this rank's rows into its slot of every rank's buffer.
  for (int64_t row = blockIdx.x; row < p.norm.num_tokens; row += gridDim.x) {
    const auto* x =
        reinterpret_cast<const V*>(static_cast<const T*>(p.norm.x) + row * p.norm.x_stride);
    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
      const V v = x[i];
      for (int owner = 0; owner < p.world_size; ++owner) {
        slot(owner, p.rank)[row * num_vecs + i] = v;
      }
    }
  }
  barrier_with_peers(p.signal_pads, p.rank, p.world_size, calls + 1u);

  // 2. Reduce from this rank's own buffer, add the residual, normalize (HF LlamaRMSNorm
  // numerics, as norm.cu).
  const auto* weight = static_cast<const V*>(p.norm.weight);
  for (int64_t row = blockIdx.x; row < p.norm.num_tokens; row += gridDim.x) {
    const auto* residual = reinterpret_cast<const V*>(static_cast<const T*>(p.norm.residual) +
                                                      row * p.norm.residual_stride);
    auto* summed =
        reinterpret_cast<V*>(static_cast<T*>(p.norm.summed) + row * p.norm.summed_stride);
    auto* out = reinterpret_cast<V*>(static_cast<T*>(p.norm.out) + row * p.norm.out_stride);
    float sum = 0.f;
    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
      float acc[kWidth];
#pragma unroll
      for (int k = 0; k < kWidth; ++k) acc[k] = 0.f;
      for (int r = 0; r < p.world_size; ++r) {
        const V v = load_staged(slot(p.rank, r) + row * num_vecs + i);
#pragma unroll
        for (int k = 0; k < kWidth; ++k) acc[k] = __fadd_rn(acc[k], to_float(v.v[k]));
      }
      const V res = residual[i];
      V s;
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        // The all-reduce's output is rounded to T, then added to the residual and rounded.
        const float reduced = round_to<T>(acc[k]);
        s.v[k] = from_float<T>(__fadd_rn(to_float(res.v[k]), reduced));
        const float f = to_float(s.v[k]);
        sum = __fadd_rn(sum, __fmul_rn(f, f));
      }
      summed[i] = s;
    }
    sum = block_sum(sum);
    const float scale = rsqrtf(__fadd_rn(__fmul_rn(sum, inv_hidden), p.norm.eps));
    // summed was written by this same thread: read back from L1/L2.
    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
      const V s = summed[i];
      const V w = weight[i];
      V o;
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        const float y = round_to<T>(__fmul_rn(to_float(s.v[k]), scale));
        o.v[k] = from_float<T>(__fmul_rn(to_float(w.v[k]), y));
      }
      out[i] = o;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) p.call_counters[blockIdx.x] = calls + 1u;
}

int round_up(int n, int multiple) { return (n + multiple - 1) / multiple * multiple; }

template <typename T>
cudaError_t launch_dtype(const PeerAddRmsNormParams& p, cudaStream_t stream) {
  constexpr int kWidth = kVecWidth<T>;
  const int num_vecs = p.norm.hidden / kWidth;
  const int threads = std::clamp(round_up(num_vecs, 32), 32, 512);
  const float inv_hidden =
      static_cast<float>(p.norm.num_tokens) /
      static_cast<float>(static_cast<int64_t>(p.norm.num_tokens) * p.norm.hidden);
  peer_add_rms_norm_kernel<T, kWidth><<<kPeerNormBlocks, threads, 0, stream>>>(p, inv_hidden);
  return cudaGetLastError();
}

}  // namespace

void launch_peer_add_rms_norm(const PeerAddRmsNormParams& p, DType dtype, cudaStream_t stream) {
  const std::string n = "peer_add_rms_norm";
  require(valid_dtype(dtype), n + ": dtype must be float32, float16 or bfloat16");
  require(p.world_size >= 2 && p.rank >= 0 && p.rank < p.world_size,
          n + ": rank " + std::to_string(p.rank) + " of world size " +
              std::to_string(p.world_size) + " is not a multi-rank group");
  require(p.norm.num_tokens >= 0, n + ": negative num_tokens");
  require(p.norm.hidden > 0,
          n + ": hidden size must be positive, got " + std::to_string(p.norm.hidden));
  require(std::isfinite(p.norm.eps) && p.norm.eps >= 0.f,
          n + ": eps must be finite and non-negative");
  require(static_cast<int64_t>(p.norm.num_tokens) * p.norm.hidden <= p.half_elems,
          n + ": " + std::to_string(p.norm.num_tokens) + " x " + std::to_string(p.norm.hidden) +
              " elements exceed the staging buffer's half of " + std::to_string(p.half_elems));
  require(p.norm.x && p.norm.residual && p.norm.weight && p.norm.out && p.norm.summed &&
              p.buffers && p.signal_pads && p.call_counters,
          n + ": null device pointer");
  const int width = dtype == DType::kFloat32 ? 4 : 8;  // elements per 16-byte vector
  require(p.norm.hidden % width == 0 && p.norm.x_stride % width == 0 &&
              p.norm.residual_stride % width == 0 && p.norm.out_stride % width == 0 &&
              p.norm.summed_stride % width == 0 && p.half_elems % width == 0 &&
              p.buffer_offset % 16 == 0 && aligned16(p.norm.x) && aligned16(p.norm.residual) &&
              aligned16(p.norm.weight) && aligned16(p.norm.out) && aligned16(p.norm.summed),
          n + ": rows, strides and pointers must be 16-byte aligned (hidden a multiple of " +
              std::to_string(width) + ")");
  if (p.norm.num_tokens == 0) return;  // every rank skips alike: the counters stay in step
  check_launch(
      dispatch_dtype(
          dtype, [&](auto tag) { return launch_dtype<typename decltype(tag)::type>(p, stream); }),
      "peer_add_rms_norm");
}

}  // namespace mmcore::kernels
