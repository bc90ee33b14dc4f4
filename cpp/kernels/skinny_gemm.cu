// Skinny GEMM (M <= 8 rows of x against an nn.Linear weight [N, K]): a weight-streaming kernel
// whose tensor-core tiles put the weight in the mma's A operand (16 weight rows = 16 outputs)
// and x^T in B (its 8 columns are the up to 8 rows of x), so one m16n8k16 mma consumes 16 x 16
// weight elements against every row of x and the float32 accumulators stay in registers.
//
// A dot product does not care in which order its K terms come, so the K index of the mma
// fragments is permuted to fit plain 16-byte loads: lane (group g = lane / 4, quad q = lane % 4)
// loads the 8-element chunk c of weight rows g and g + 8 and of x row g, and two mmas use the
// chunk's elements {0..3} and {4..7} as fragment columns {2q, 2q + 1, 2q + 8, 2q + 9}. A and B
// see the same permutation, so the products pair up as in the plain layout. Per instruction the
// 4 lanes of a group read 64 contiguous bytes of a row; per iteration a warp reads kUnroll * 64
// contiguous bytes of each of its 16 rows, all loads issued before the first mma.
//
// A CTA (kWarps warps) owns 16 weight rows; its warps split K (warp w takes chunk blocks
// w, w + kWarps, ...) and their partial tiles are summed through shared memory in a fixed order
// (deterministic), then the bias is added in float32 and each output rounded once. Weights are
// read once with ld.global.nc.L1::no_allocate (streamed past L1, 256-byte L2 prefetch); x is tiny
// and read through L1 by __ldg. Rows of x beyond M load zeros instead.
#include <string>

#include "kernels/elementwise_utils.cuh"
#include "kernels/mma_utils.cuh"
#include "kernels/skinny_gemm.h"

namespace mmcore::kernels {
namespace {

constexpr int kRowsPerCta = 16;  // the mma's m: weight rows (outputs) per CTA
constexpr int kWarps = 8;        // warps per CTA, splitting K
constexpr int kUnroll = 4;       // 16-byte chunks per lane and row in flight per iteration
constexpr int kChunk = 8;        // elements per 16-byte chunk

// Streaming 16-byte load of read-only data: not kept in L1, L2 asked to fetch 256 bytes around.
__device__ __forceinline__ uint4 load_streaming(const uint4* ptr) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(ptr));
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) skinny_gemm_kernel(const SkinnyGemmParams p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = lane >> 2, quad = lane & 3;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerCta;
  const int num_chunks = p.k / kChunk;

  const int64_t lo_row = row0 + group, hi_row = lo_row + 8;
  const bool lo_ok = lo_row < p.n, hi_ok = hi_row < p.n, x_ok = group < p.m;
  const T* weight = static_cast<const T*>(p.weight);
  const auto* w_lo =
      reinterpret_cast<const uint4*>(weight + (lo_ok ? lo_row : 0) * p.weight_stride);
  const auto* w_hi =
      reinterpret_cast<const uint4*>(weight + (hi_ok ? hi_row : 0) * p.weight_stride);
  const auto* x_row =
      reinterpret_cast<const uint4*>(static_cast<const T*>(p.x) + (x_ok ? group : 0) * p.x_stride);

  // acc[j]: weight row group + 8 * (j / 2) (output column), x row 2 * quad + j % 2.
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  constexpr int kWarpChunks = kUnroll * 4;          // chunks per row a warp reads per iteration
  constexpr int kCtaChunks = kWarps * kWarpChunks;  // ... and the CTA
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  // The bound is warp-uniform (mma.sync needs the whole warp); lanes past K load zeros.
  for (int base = warp * kWarpChunks; base < num_chunks; base += kCtaChunks) {
    uint4 a_lo[kUnroll], a_hi[kUnroll], b[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = base + u * 4 + quad;
      const bool in_k = c < num_chunks;
      a_lo[u] = in_k && lo_ok ? load_streaming(w_lo + c) : zero;
      a_hi[u] = in_k && hi_ok ? load_streaming(w_hi + c) : zero;
      b[u] = in_k && x_ok ? __ldg(x_row + c) : zero;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      // A registers: {row g cols 2q..2q+1, row g+8 cols 2q.., row g cols 2q+8.., row g+8 ...};
      // B registers: {k 2q..2q+1, k 2q+8..2q+9} of column g. Chunk halves 0-3, then 4-7.
      const uint32_t first[4] = {a_lo[u].x, a_hi[u].x, a_lo[u].y, a_hi[u].y};
      mma_16816<T>(acc, first, b[u].x, b[u].y);
      const uint32_t second[4] = {a_lo[u].z, a_hi[u].z, a_lo[u].w, a_hi[u].w};
      mma_16816<T>(acc, second, b[u].z, b[u].w);
    }
  }

  __shared__ float4 partial[kWarps][32];
  partial[warp][lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  __syncthreads();
  // Thread i writes out[m][row0 + r] for i = m * 16 + r (consecutive threads, consecutive n).
  for (int i = threadIdx.x; i < kRowsPerCta * p.m; i += blockDim.x) {
    const int m = i / kRowsPerCta, r = i % kRowsPerCta;
    const int64_t n = row0 + r;
    if (n >= p.n) continue;
    const int owner = (r & 7) * 4 + (m >> 1);  // the lane holding (row r, column m)
    const int j = (r >> 3) * 2 + (m & 1);
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += reinterpret_cast<const float*>(&partial[w][owner])[j];
    if (p.bias != nullptr) sum += to_float(static_cast<const T*>(p.bias)[n]);
    static_cast<T*>(p.out)[m * p.out_stride + n] = from_float<T>(sum);
  }
}

template <typename T>
cudaError_t launch_dtype(const SkinnyGemmParams& p, cudaStream_t stream) {
  const int ctas = (p.n + kRowsPerCta - 1) / kRowsPerCta;
  skinny_gemm_kernel<T><<<ctas, kWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

void launch_skinny_gemm(const SkinnyGemmParams& p, DType dtype, cudaStream_t stream) {
  const std::string n = "skinny_gemm";
  require(dtype == DType::kFloat16 || dtype == DType::kBFloat16,
          n + ": dtype must be float16 or bfloat16");
  require(p.m >= 1 && p.m <= kSkinnyGemmMaxM, n + ": rows of x (M) must be in 1.." +
                                                  std::to_string(kSkinnyGemmMaxM) + ", got " +
                                                  std::to_string(p.m));
  require(p.n >= 1, n + ": output features (N) must be positive, got " + std::to_string(p.n));
  require(p.k >= 1 && p.k % kChunk == 0,
          n + ": input features (K) must be a positive multiple of 8, got " + std::to_string(p.k));
  require(p.x && p.weight && p.out, n + ": null device pointer");
  require(aligned16(p.x) && aligned16(p.weight),
          n + ": x and weight must be 16-byte aligned (use F.linear otherwise)");
  require(p.weight_stride >= p.k && p.weight_stride % kChunk == 0,
          n + ": weight row stride must be >= K and a multiple of 8 elements, got " +
              std::to_string(p.weight_stride));
  require(p.m == 1 || (p.x_stride >= p.k && p.x_stride % kChunk == 0),
          n + ": x row stride must be >= K and a multiple of 8 elements, got " +
              std::to_string(p.x_stride));
  require(p.m == 1 || p.out_stride >= p.n,
          n + ": out row stride must be >= N, got " + std::to_string(p.out_stride));
  cudaError_t err = cudaErrorInvalidValue;
  if (dtype == DType::kFloat16) {
    err = launch_dtype<__half>(p, stream);
  } else {
    err = launch_dtype<__nv_bfloat16>(p, stream);
  }
  check_launch(err, "skinny_gemm");
}

}  // namespace mmcore::kernels
