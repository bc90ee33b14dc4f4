// Launchers of the attention kernels: validate the arguments (std::invalid_argument naming the
// problem), pick the kernel variant for the head dim, dtype and batch shape, and launch on the
// given stream. Pointers in AttentionParams are device pointers; nothing here allocates.
#pragma once
#include <cuda_runtime.h>

#include "kernels/attention_params.h"
#include "kernels/attention_plan.h"

namespace mmcore::kernels {

// Paged causal attention; p.tile_offsets needs num_seqs + 1 int32s; split buffers as documented
// in AttentionParams when a launch of the plan splits (sized for the larger count; the two
// launches reuse them in stream order). p.num_splits is taken from the plan. kv_dtype: the
// caches' dtype, `dtype` (the query's) or kFloat8E4M3 (then p.k_scale / p.v_scale are
// required). Throws std::invalid_argument on bad arguments and std::runtime_error on a CUDA
// error.
void launch_paged_attention(AttentionParams p, DType dtype, DType kv_dtype, int head_dim,
                            PagedLaunchPlan plan, cudaStream_t stream);

// Packed varlen attention (cu_seqlens in p.query_start_loc, seq_lens null); causal as in p.
void launch_varlen_attention(AttentionParams p, DType dtype, int head_dim, cudaStream_t stream);

// Per-variant entry points, one translation unit per head dim (attention_d*.cu).
template <int kHeadDim>
[[nodiscard]] cudaError_t run_attention(const AttentionParams& p, DType dtype,
                                        AttentionVariant variant, cudaStream_t stream);

// Hopper prefill / packed attention on wgmma (attention_sm90_d*.cu): head dims 64, 72, 80, 128,
// 256, float16 / bfloat16 K/V, no split-KV. Built when the architectures include 90a and the
// CUTLASS headers were found (MMCORE_SM90A_ATTENTION); launched on compute capability 9.0
// devices.
template <int kHeadDim>
[[nodiscard]] cudaError_t run_attention_sm90(const AttentionParams& p, DType dtype, bool paged,
                                             cudaStream_t stream);

// Head dims whose Hopper kernel also reads FP8 (e4m3) paged caches (paged prefill; the FP8
// variants are instantiated for them only).
constexpr bool sm90_kv_fp8_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128; }

// Whether prefill / packed launches of this head dim, K/V dtype and split count run the Hopper
// kernel on the current device (false when not built, on other devices, or with
// MMCORE_SM90_ATTENTION=0 in the environment or after set_sm90_attention_enabled(false)).
bool sm90_attention_selected(int head_dim, bool kv_fp8, int num_splits);
// Turns the Hopper kernel on or off process-wide (A/B measurements and tests); the getter says
// which was set last (on by default unless MMCORE_SM90_ATTENTION=0).
void set_sm90_attention_enabled(bool enabled);
bool sm90_attention_enabled();

}  // namespace mmcore::kernels
