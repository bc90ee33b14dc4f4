// Validation and variant selection for the attention launchers (see attention.h).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/attention.h"
#include "kernels/launch_utils.h"

namespace mmcore::kernels {
namespace {

// Shared checks of both launchers; `name` prefixes the messages.
void check_common(const AttentionParams& p, DType dtype, int head_dim, const char* name) {
  const std::string n(name);
  require(head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 72 || head_dim == 80 ||
              head_dim == 128 || head_dim == 256,
          n + ": head_dim must be 16, 32, 64, 72, 80, 128 or 256, got " + std::to_string(head_dim));
  require(dtype == DType::kFloat16 || dtype == DType::kBFloat16,
          n + ": dtype must be float16 or bfloat16");
  require(p.num_seqs >= 0 && p.num_tokens >= 0, n + ": negative batch size");
  require(p.num_q_heads > 0 && p.num_kv_heads > 0 && p.num_q_heads % p.num_kv_heads == 0,
          n + ": num_q_heads (" + std::to_string(p.num_q_heads) +
              ") must be a positive multiple of num_kv_heads (" + std::to_string(p.num_kv_heads) +
              ")");
  require(p.num_kv_heads <= 65535, n + ": too many KV heads");
  require(p.q && p.k && p.v && p.out && p.query_start_loc && p.tile_offsets,
          n + ": null device pointer");
  require(aligned16(p.q) && aligned16(p.k) && aligned16(p.v) && aligned16(p.out),
          n + ": query/key/value/out must be 16-byte aligned");
  const int64_t strides[] = {p.q_stride_token,   p.q_stride_head,  p.k_stride_token,
                             p.k_stride_head,    p.v_stride_token, p.v_stride_head,
                             p.out_stride_token, p.out_stride_head};
  for (int64_t s : strides) {
    require(
        s >= 0 && s % 8 == 0,
        n + ": token/head strides must be non-negative multiples of 8 elements (16 bytes), got " +
            std::to_string(s));
  }
  require(p.out_stride_head % 2 == 0, n + ": bad out stride");
  require(std::isfinite(p.scale_log2) && p.scale_log2 > 0.f, n + ": scale must be positive");
  require(p.num_splits >= 1 && p.num_splits <= kAttentionMaxSplits,
          n + ": num_splits must be in [1, " + std::to_string(kAttentionMaxSplits) + "]");
  require(p.num_splits == 1 || (p.partial_out && p.partial_lse),
          n + ": split-KV needs partial_out and partial_lse buffers");
}

cudaError_t run_for_head_dim(const AttentionParams& p, DType dtype, int head_dim,
                             AttentionVariant variant, cudaStream_t stream) {
  switch (head_dim) {
    case 16:
      return run_attention<16>(p, dtype, variant, stream);
    case 32:
      return run_attention<32>(p, dtype, variant, stream);
    case 64:
      return run_attention<64>(p, dtype, variant, stream);
    case 72:
      return run_attention<72>(p, dtype, variant, stream);
    case 80:
      return run_attention<80>(p, dtype, variant, stream);
    case 128:
      return run_attention<128>(p, dtype, variant, stream);
    case 256:
      return run_attention<256>(p, dtype, variant, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// Prefill / packed launches: the Hopper kernel where sm90_attention_selected says so.
cudaError_t run_prefill(const AttentionParams& p, DType dtype, int head_dim,
                        AttentionVariant variant, cudaStream_t stream) {
#if MMCORE_SM90A_ATTENTION
  if (sm90_attention_selected(head_dim, p.kv_fp8, p.num_splits)) {
    const bool paged = variant == AttentionVariant::kPagedPrefill;
    switch (head_dim) {
      case 64:
        return run_attention_sm90<64>(p, dtype, paged, stream);
      case 72:
        return run_attention_sm90<72>(p, dtype, paged, stream);
      case 80:
        return run_attention_sm90<80>(p, dtype, paged, stream);
      case 128:
        return run_attention_sm90<128>(p, dtype, paged, stream);
      case 256:
        return run_attention_sm90<256>(p, dtype, paged, stream);
      default:
        return cudaErrorInvalidValue;  // sm90_head_dim lists the cases above
    }
  }
#endif
  return run_for_head_dim(p, dtype, head_dim, variant, stream);
}

#if MMCORE_SM90A_ATTENTION
// Head dims the Hopper kernel is built for (attention_sm90_d*.cu).
constexpr bool sm90_head_dim(int head_dim) {
  return head_dim == 64 || head_dim == 72 || head_dim == 80 || head_dim == 128 || head_dim == 256;
}

// Compute capability major * 10 + minor of the current device, looked up once per device.
int current_device_capability() {
  static int capability[kMaxCachedDevices] = {};
  return current_device_cached(capability, 0, [](int device) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    return major * 10 + minor;
  });
}
#endif

// Off with MMCORE_SM90_ATTENTION=0 in the environment, or set_sm90_attention_enabled(false).
std::atomic<bool> g_sm90_enabled{env_flag("MMCORE_SM90_ATTENTION")};

}  // namespace

void set_sm90_attention_enabled(bool enabled) { g_sm90_enabled.store(enabled); }

bool sm90_attention_enabled() { return g_sm90_enabled.load(); }

bool sm90_attention_selected(int head_dim, bool kv_fp8, int num_splits) {
#if MMCORE_SM90A_ATTENTION
  return g_sm90_enabled.load(std::memory_order_relaxed) && sm90_head_dim(head_dim) &&
         (!kv_fp8 || sm90_kv_fp8_head_dim(head_dim)) && num_splits == 1 &&
         current_device_capability() == 90;
#else
  (void)head_dim, (void)kv_fp8, (void)num_splits;
  return false;
#endif
}

void launch_paged_attention(AttentionParams p, DType dtype, DType kv_dtype, int head_dim,
                            PagedLaunchPlan plan, cudaStream_t stream) {
  require(plan.decode_splits >= 0 && plan.prefill_splits >= 0 &&
              plan.decode_splits + plan.prefill_splits > 0,
          "paged_attention: the plan launches neither variant");
  p.num_splits = std::max(plan.decode_splits, plan.prefill_splits);
  check_common(p, dtype, head_dim, "paged_attention");
  require(kv_dtype == dtype || kv_dtype == DType::kFloat8E4M3,
          "paged_attention: the KV cache must have the query's dtype or float8_e4m3fn");
  p.kv_fp8 = kv_dtype == DType::kFloat8E4M3;
  if (p.kv_fp8) {
    require(p.k_scale && p.v_scale, "paged_attention: an FP8 KV cache needs k_scale and v_scale");
    // 16-byte copies of 16 e4m3 values; 8-byte ones where the head dim is not a multiple of 16.
    const int64_t align = head_dim % 16 == 0 ? 16 : 8;
    const int64_t kv_strides[] = {p.k_stride_block, p.k_stride_token, p.k_stride_head,
                                  p.v_stride_block, p.v_stride_token, p.v_stride_head};
    for (int64_t s : kv_strides) {
      require(s % align == 0, "paged_attention: FP8 cache strides must be multiples of " +
                                  std::to_string(align) + " elements, got " + std::to_string(s));
    }
  } else {
    p.k_scale = p.v_scale = nullptr;
  }
  require(p.block_tables && p.seq_lens, "paged_attention: null block_tables or seq_lens");
  require(p.block_size > 0, "paged_attention: block_size must be positive");
  require(p.block_table_stride >= 0 && p.k_stride_block >= 0 && p.v_stride_block >= 0,
          "paged_attention: negative stride");
  require(p.k_stride_block % 8 == 0 && p.v_stride_block % 8 == 0,
          "paged_attention: cache block strides must be multiples of 8 elements");
  p.group = p.num_q_heads / p.num_kv_heads;
  p.causal = true;
  p.block_shift = -1;
  for (int shift = 0; shift < 31; ++shift) {
    if ((1 << shift) == p.block_size) p.block_shift = shift;
  }
  if (p.num_seqs == 0 || p.num_tokens == 0) return;
  if (plan.decode_splits > 0) {
    // Sequences of <= 16 rows: each a single row tile of the decode variant.
    AttentionParams d = p;
    d.num_splits = plan.decode_splits;
    d.one_tile_per_seq = true;
    d.max_rows = kPagedDecodeRows;
    check_launch(run_for_head_dim(d, dtype, head_dim, AttentionVariant::kPagedDecode, stream),
                 "paged_attention");
  }
  if (plan.prefill_splits > 0) {
    AttentionParams f = p;
    f.num_splits = plan.prefill_splits;
    f.one_tile_per_seq = false;
    if (plan.decode_splits > 0) f.min_rows = kPagedDecodeRows + 1;
    check_launch(run_prefill(f, dtype, head_dim, AttentionVariant::kPagedPrefill, stream),
                 "paged_attention");
  }
}

void launch_varlen_attention(AttentionParams p, DType dtype, int head_dim, cudaStream_t stream) {
  check_common(p, dtype, head_dim, "varlen_attention");
  p.group = p.num_q_heads / p.num_kv_heads;
  p.seq_lens = nullptr;
  p.block_tables = nullptr;
  p.sliding_window = -1;
  p.attend_until = nullptr;
  p.kv_fp8 = false;
  if (p.num_seqs == 0 || p.num_tokens == 0) return;
  check_launch(run_prefill(p, dtype, head_dim, AttentionVariant::kPacked, stream),
               "varlen_attention");
}

}  // namespace mmcore::kernels
