// Dense GEMV for decode (see dense_gemv.h). One CTA per SM owns a contiguous range of output
// channels; its 512 threads split k into 16-byte chunks (thread t holds chunks t, t + 512, ...
// of every row, so a warp reads 512 contiguous bytes), keep their chunks of the activation rows
// in registers, and stream the weight rows kRowGroup at a time with every load of a group
// issued before the first use (~64 KB in flight an SM; one activation row keeps the next group's
// loads in flight too, ~128 KB). Each row's per-thread sums meet in a
// warp reduction and then in shared memory. Launched as a programmatic dependent launch (pdl.cuh)
// it prefetches its first weight rows into the L2 before the previous kernel has finished.
// A gated MLP's gate_up product can end in silu(gate) * up: a CTA then owns a range of output
// channels and streams both their gate rows and their up rows, so the activation needs no launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "kernels/dense_gemv.h"
#include "kernels/elementwise_utils.cuh"
#include "kernels/pdl.cuh"

namespace mmcore::kernels {
namespace {

constexpr int kThreads = kDenseGemvThreads;
constexpr int kWarps = kThreads / 32;
constexpr int kLoadsInFlight = 8;  // fewest 16-byte weight loads a thread issues before use
constexpr int kMaxPartials = 48 * 1024 / sizeof(float);
constexpr int kPrefetchGroups = 2;  // row groups a CTA prefetches into the L2 before pdl_wait

template <typename T>
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  const auto* wv = reinterpret_cast<const T*>(&w);
  const auto* xv = reinterpret_cast<const T*>(&x);
#pragma unroll
  for (int e = 0; e < 8; ++e) acc = fmaf(to_float(wv[e]), to_float(xv[e]), acc);
  return acc;
}

// kChunks: 16-byte chunks of a row per thread; kRows: activation rows.
template <typename T, int kChunks, int kRows>
__global__ void __launch_bounds__(kThreads, 1)
    dense_gemv_kernel(const DenseGemvParams p, int rows_per_cta, bool warm_l2) {
  // Whole rows a group: one activation row rounds up (k = 11008, 3 chunks, keeps 9 loads in
  // flight, not 6); more rows round down, their x chunks and sums already fill the registers.
  constexpr int kRowGroup =
      std::max(1, (kLoadsInFlight + (kRows == 1 ? kChunks - 1 : 0)) / kChunks);
  extern __shared__ float partial[];  // [weight rows of the CTA][kRows][kWarps]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Output channels [row_begin, row_end); gated, weight row v of the CTA is channel v's gate row
  // for v < count, else channel (v - count)'s up row, half rows on.
  const int half = p.silu_mul ? p.n / 2 : p.n;
  const int row_begin = blockIdx.x * rows_per_cta;
  const int row_end = min(half, row_begin + rows_per_cta);
  const int count = row_end - row_begin;
  const int weight_rows = p.silu_mul ? 2 * count : count;
  auto weight_row = [&](int v) { return v < count ? row_begin + v : half + row_begin + v - count; };
  const int num_chunks = p.k / 8;

  // Under PDL, warm the L2 with this CTA's first weight rows while the kernel that writes x
  // finishes (weights are never an earlier kernel's output). Loading those rows into registers
  // before the wait instead slowed the k = 4096 shapes 1.2x, and without PDL the prefetch is
  // ~1 us of latency a launch, so it is skipped.
  const T* weight = static_cast<const T*>(p.weight);
  const int lines_per_row = (p.k * static_cast<int>(sizeof(T)) + 127) / 128;
  const int prefetch_lines =
      warm_l2 ? min(weight_rows, kPrefetchGroups * kRowGroup) * lines_per_row : 0;
  for (int i = tid; i < prefetch_lines; i += kThreads) {
    const T* row = weight + static_cast<int64_t>(weight_row(i / lines_per_row)) * p.w_stride;
    const char* line = reinterpret_cast<const char*>(row) + (i % lines_per_row) * 128;
    asm volatile("prefetch.global.L2 [%0];" ::"l"(line));
  }
  pdl_wait();

  // The activation chunks stay in registers when few; else they are re-read (L1 hits) per row.
  constexpr bool kXInRegs = kChunks * kRows <= 8;
  auto load_x = [&](int j, int r) {
    const int c = tid + j * kThreads;
    return c < num_chunks
               ? reinterpret_cast<const uint4*>(static_cast<const T*>(p.x) + r * p.x_stride)[c]
               : make_uint4(0, 0, 0, 0);
  };
  uint4 xr[kXInRegs ? kChunks : 1][kXInRegs ? kRows : 1];
  if constexpr (kXInRegs) {
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) xr[j][r] = load_x(j, r);
    }
  }

  using Group = uint4[kRowGroup][kChunks];
  auto load_group = [&](Group& w, int v0) {
#pragma unroll
    for (int u = 0; u < kRowGroup; ++u) {
      const T* row = weight + static_cast<int64_t>(weight_row(v0 + u)) * p.w_stride;
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        const int c = tid + j * kThreads;
        w[u][j] = v0 + u < weight_rows && c < num_chunks ? reinterpret_cast<const uint4*>(row)[c]
                                                         : make_uint4(0, 0, 0, 0);
      }
    }
  };
  auto use_group = [&](const Group& w, int v0) {
#pragma unroll
    for (int u = 0; u < kRowGroup; ++u) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < kChunks; ++j) {
          if constexpr (kXInRegs) {
            acc = dot8<T>(w[u][j], xr[j][r], acc);
          } else {
            acc = dot8<T>(w[u][j], load_x(j, r), acc);
          }
        }
        acc = warp_sum(acc);
        if (lane == 0 && v0 + u < weight_rows)
          partial[((v0 + u) * kRows + r) * kWarps + warp] = acc;
      }
    }
  };
  // Two groups in registers: the next group's loads are in flight while this one is summed.
  // One activation row of at most 5 chunks leaves the registers for it (more chunks spill).
  constexpr bool kDoubleBuffer = kRows == 1 && kChunks <= 5;
  if constexpr (kDoubleBuffer) {
    Group wa, wb;
    load_group(wa, 0);
    for (int v0 = 0; v0 < weight_rows; v0 += 2 * kRowGroup) {
      load_group(wb, v0 + kRowGroup);
      use_group(wa, v0);
      load_group(wa, v0 + 2 * kRowGroup);
      use_group(wb, v0 + kRowGroup);
    }
  } else {
    for (int v0 = 0; v0 < weight_rows; v0 += kRowGroup) {
      Group w;
      load_group(w, v0);
      use_group(w, v0);
    }
  }
  pdl_launch_dependents();  // the next kernel's CTAs may start; they wait for this one's writes
  __syncthreads();

  // Sum of weight row v's per-warp partials for activation row r, plus its bias.
  auto output = [&](int v, int r) {
    const float* sums = partial + (v * kRows + r) * kWarps;
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) acc += sums[w];
    if (p.bias != nullptr) acc += to_float(static_cast<const T*>(p.bias)[weight_row(v)]);
    return acc;
  };
  for (int o = tid; o < count * kRows; o += kThreads) {
    const int local = o / kRows, r = o % kRows;
    float y;
    if (p.silu_mul) {
      // Round gate and up to T first and compute silu as silu_and_mul_kernel does (bit-equal).
      const float g = round_to<T>(output(local, r)), up = round_to<T>(output(count + local, r));
      y = __fmul_rn(round_to<T>(g / (1.f + expf(-g))), up);
    } else {
      y = output(local, r);
    }
    static_cast<T*>(p.out)[r * p.out_stride + row_begin + local] = from_float<T>(y);
  }
}

template <typename T, int kChunks, int kRows>
cudaError_t launch_shape(const DenseGemvParams& p, cudaStream_t stream) {
  // One CTA an SM, each a contiguous share of the rows (wide outputs take several waves, their
  // partial sums bounded by 48 KB of shared memory).
  // Gated, a CTA's channels each take two weight rows (gate, up).
  const int sms = current_device_sm_count();
  const int outputs = p.silu_mul ? p.n / 2 : p.n, rows_per_output = p.silu_mul ? 2 : 1;
  const int rows_per_cta =
      std::min((outputs + sms - 1) / sms, kMaxPartials / (rows_per_output * kRows * kWarps));
  const int blocks = (outputs + rows_per_cta - 1) / rows_per_cta;
  const size_t smem =
      static_cast<size_t>(rows_per_cta) * rows_per_output * kRows * kWarps * sizeof(float);
  return launch_pdl(dense_gemv_kernel<T, kChunks, kRows>, dim3(blocks), dim3(kThreads), smem,
                    stream, p, rows_per_cta, pdl_enabled());
}

template <typename T, int kChunks>
cudaError_t launch_chunks(const DenseGemvParams& p, cudaStream_t stream) {
  switch (p.rows) {
    case 1:
      return launch_shape<T, kChunks, 1>(p, stream);
    case 2:
      return launch_shape<T, kChunks, 2>(p, stream);
    case 3:
      return launch_shape<T, kChunks, 3>(p, stream);
    default:
      return launch_shape<T, kChunks, 4>(p, stream);
  }
}

template <typename T>
cudaError_t launch_dtype(const DenseGemvParams& p, cudaStream_t stream) {
  switch ((p.k / 8 + kThreads - 1) / kThreads) {
    case 1:
      return launch_chunks<T, 1>(p, stream);
    case 2:
      return launch_chunks<T, 2>(p, stream);
    case 3:
      return launch_chunks<T, 3>(p, stream);
    case 4:
      return launch_chunks<T, 4>(p, stream);
    case 5:
      return launch_chunks<T, 5>(p, stream);
    case 6:
      return launch_chunks<T, 6>(p, stream);
    case 7:
      return launch_chunks<T, 7>(p, stream);
    default:
      return launch_chunks<T, 8>(p, stream);
  }
}

}  // namespace

void launch_dense_gemv(const DenseGemvParams& p, DType dtype, cudaStream_t stream) {
  const std::string n = "dense_gemv";
  require(dtype == DType::kFloat16 || dtype == DType::kBFloat16,
          n + ": tensors must be float16 or bfloat16");
  require(p.rows >= 1 && p.rows <= kDenseGemvMaxRows, n + ": rows must be in 1.." +
                                                          std::to_string(kDenseGemvMaxRows) +
                                                          ", got " + std::to_string(p.rows));
  require(p.n > 0 && p.k > 0 && p.k % 8 == 0 &&
              p.k <= 8 * kDenseGemvThreads * kDenseGemvMaxChunksPerThread,
          n + ": n must be positive and k a multiple of 8 in 8.." +
              std::to_string(8 * kDenseGemvThreads * kDenseGemvMaxChunksPerThread) + ", got n " +
              std::to_string(p.n) + ", k " + std::to_string(p.k));
  require(!p.silu_mul || p.n % 2 == 0,
          n + ": silu_mul needs an even n ([gate | up] rows), got " + std::to_string(p.n));
  require(p.x && p.weight && p.out, n + ": null device pointer");
  require(aligned16(p.x) && aligned16(p.weight) && p.x_stride % 8 == 0 && p.w_stride % 8 == 0 &&
              p.x_stride >= p.k && p.w_stride >= p.k &&
              p.out_stride >= (p.silu_mul ? p.n / 2 : p.n),
          n + ": x rows and weight rows must be 16-byte aligned (strides multiples of 8)");
  check_launch(dtype == DType::kFloat16 ? launch_dtype<__half>(p, stream)
                                        : launch_dtype<__nv_bfloat16>(p, stream),
               "dense_gemv");
}

}  // namespace mmcore::kernels
