// mmcore._kernels: launchers of the CUDA kernels. Arguments are raw device pointers (ints),
// sizes, element strides, dtype codes and a CUDA stream handle; torch custom ops in
// python/mmcore/kernels/ops.py wrap them. No torch headers: the module is torch-ABI-free.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/cache_write.h"
#include "kernels/dense_gemv.h"
#include "kernels/fp8_gemv.h"
#include "kernels/norm.h"
#include "kernels/peer_norm.h"
#include "kernels/probe.h"
#include "kernels/quant_fp8.h"
#include "kernels/rotary.h"

namespace py = pybind11;
using mmcore::kernels::AttentionParams;
using mmcore::kernels::DType;
using Strides2 = std::array<int64_t, 2>;
using Strides3 = std::array<int64_t, 3>;

namespace {

template <typename T>
T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

cudaStream_t as_stream(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

DType as_dtype(int code) {
  if (code < 0 || code > 3)
    throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

constexpr float kLog2e = 1.4426950408889634f;

// Fields shared by both attention launchers.
AttentionParams attention_params(uintptr_t q, Strides2 q_strides, uintptr_t out,
                                 Strides2 out_strides, uintptr_t query_start_loc,
                                 uintptr_t tile_offsets, int num_seqs, int num_tokens,
                                 int num_q_heads, int num_kv_heads, double scale, int num_splits,
                                 uintptr_t partial_out, uintptr_t partial_lse) {
  AttentionParams p;
  p.q = as_ptr<const void>(q);
  p.q_stride_token = q_strides[0];
  p.q_stride_head = q_strides[1];
  p.out = as_ptr<void>(out);
  p.out_stride_token = out_strides[0];
  p.out_stride_head = out_strides[1];
  p.query_start_loc = as_ptr<const int32_t>(query_start_loc);
  p.tile_offsets = as_ptr<int32_t>(tile_offsets);
  p.num_seqs = num_seqs;
  p.num_tokens = num_tokens;
  p.num_q_heads = num_q_heads;
  p.num_kv_heads = num_kv_heads;
  p.scale_log2 = static_cast<float>(scale) * kLog2e;
  p.num_splits = num_splits;
  p.partial_out = as_ptr<float>(partial_out);
  p.partial_lse = as_ptr<float>(partial_lse);
  return p;
}

void bind_attention(py::module_& m) {
  m.def(
      "sm90_attention_selected",
      [](int head_dim, bool kv_fp8, int num_splits) {
        return mmcore::kernels::sm90_attention_selected(head_dim, kv_fp8, num_splits);
      },
      py::arg("head_dim"), py::arg("kv_fp8") = false, py::arg("num_splits") = 1,
      "Whether prefill / packed attention of this head dim runs the Hopper (sm90a, wgmma) kernel "
      "on the current device.");
  m.def("set_sm90_attention_enabled", &mmcore::kernels::set_sm90_attention_enabled,
        py::arg("enabled"),
        "Turns the Hopper attention kernel on or off for this process (default on; "
        "MMCORE_SM90_ATTENTION=0 starts it off).");
  m.def("sm90_attention_enabled", &mmcore::kernels::sm90_attention_enabled,
        "Whether the Hopper attention kernel is turned on for this process (whatever the device).");
  m.def(
      "paged_launch_plan",
      [](int num_seqs, int num_tokens, int num_q_heads, int num_kv_heads, int min_query_len,
         int max_query_len, int max_seq_len, int num_sms, int head_dim, int min_tiles_per_split) {
        if (num_kv_heads <= 0 || num_q_heads % num_kv_heads != 0)
          throw std::invalid_argument("paged_launch_plan: num_q_heads % num_kv_heads != 0");
        if (min_query_len < 0 || max_query_len < min_query_len)
          throw std::invalid_argument(
              "paged_launch_plan: need 0 <= min_query_len <= max_query_len");
        const auto plan = mmcore::kernels::plan_paged_attention(
            head_dim, num_seqs, num_tokens, num_kv_heads, num_q_heads / num_kv_heads, min_query_len,
            max_query_len, max_seq_len, num_sms, min_tiles_per_split);
        return py::make_tuple(plan.decode_splits, plan.prefill_splits);
      },
      py::arg("num_seqs"), py::arg("num_tokens"), py::arg("num_q_heads"), py::arg("num_kv_heads"),
      py::arg("min_query_len"), py::arg("max_query_len"), py::arg("max_seq_len"),
      py::arg("num_sms"), py::arg("head_dim") = 128, py::arg("min_tiles_per_split") = 1,
      "(decode_splits, prefill_splits) of a paged step: KV splits of the decode-variant launch "
      "(sequences of <= 16 query rows) and of the prefill-variant launch (longer ones); 0 = "
      "that launch is not needed; a split gets at least min_tiles_per_split tiles of 64 keys.");
  m.def(
      "paged_attention",
      [](uintptr_t q, Strides2 q_strides, uintptr_t key_cache, Strides3 k_strides,
         uintptr_t value_cache, Strides3 v_strides, int block_size, uintptr_t block_tables,
         int64_t block_table_stride, uintptr_t seq_lens, uintptr_t query_start_loc,
         uintptr_t tile_offsets, uintptr_t out, Strides2 out_strides, int num_seqs, int num_tokens,
         int num_q_heads, int num_kv_heads, int head_dim, int dtype, double scale,
         int sliding_window, int decode_splits, int prefill_splits, uintptr_t partial_out,
         uintptr_t partial_lse, uintptr_t stream, uintptr_t attend_until, int kv_dtype,
         uintptr_t k_scale, uintptr_t v_scale, uintptr_t split_counters, int split_counter_capacity,
         int64_t num_cache_blocks) {
        AttentionParams p = attention_params(q, q_strides, out, out_strides, query_start_loc,
                                             tile_offsets, num_seqs, num_tokens, num_q_heads,
                                             num_kv_heads, scale, 1, partial_out, partial_lse);
        p.k = as_ptr<const void>(key_cache);
        p.k_stride_block = k_strides[0];
        p.k_stride_token = k_strides[1];
        p.k_stride_head = k_strides[2];
        p.v = as_ptr<const void>(value_cache);
        p.v_stride_block = v_strides[0];
        p.v_stride_token = v_strides[1];
        p.v_stride_head = v_strides[2];
        p.block_size = block_size;
        p.block_tables = as_ptr<const int32_t>(block_tables);
        p.block_table_stride = block_table_stride;
        p.seq_lens = as_ptr<const int32_t>(seq_lens);
        p.sliding_window = sliding_window;
        p.attend_until = as_ptr<const int32_t>(attend_until);
        p.k_scale = as_ptr<const float>(k_scale);
        p.v_scale = as_ptr<const float>(v_scale);
        p.split_counters = as_ptr<uint32_t>(split_counters);
        p.split_counter_capacity = split_counters ? split_counter_capacity : 0;
        p.num_cache_blocks = num_cache_blocks;
        py::gil_scoped_release release;
        mmcore::kernels::launch_paged_attention(p, as_dtype(dtype),
                                                as_dtype(kv_dtype < 0 ? dtype : kv_dtype), head_dim,
                                                {decode_splits, prefill_splits}, as_stream(stream));
      },
      py::arg("q"), py::arg("q_strides"), py::arg("key_cache"), py::arg("k_strides"),
      py::arg("value_cache"), py::arg("v_strides"), py::arg("block_size"), py::arg("block_tables"),
      py::arg("block_table_stride"), py::arg("seq_lens"), py::arg("query_start_loc"),
      py::arg("tile_offsets"), py::arg("out"), py::arg("out_strides"), py::arg("num_seqs"),
      py::arg("num_tokens"), py::arg("num_q_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
      py::arg("dtype"), py::arg("scale"), py::arg("sliding_window"), py::arg("decode_splits"),
      py::arg("prefill_splits"), py::arg("partial_out"), py::arg("partial_lse"), py::arg("stream"),
      py::arg("attend_until") = 0, py::arg("kv_dtype") = -1, py::arg("k_scale") = 0,
      py::arg("v_scale") = 0, py::arg("split_counters") = 0, py::arg("split_counter_capacity") = 0,
      py::arg("num_cache_blocks") = 0,
      "Causal paged attention over a mixed prefill/decode batch (device pointers as ints; "
      "attend_until 0 = plain causal; kv_dtype -1 = the query's, 3 = FP8 e4m3 with per-KV-head "
      "float32 k_scale / v_scale; split_counters: zeroed uint32 counters that let the last "
      "split merge the others, 0 = a combine kernel; num_cache_blocks: blocks in each cache, which "
      "the Hopper kernel's TMA loads need, 0 = its cp.async loads).");
  m.def(
      "varlen_attention",
      [](uintptr_t q, Strides2 q_strides, uintptr_t k, Strides2 k_strides, uintptr_t v,
         Strides2 v_strides, uintptr_t cu_seqlens, uintptr_t tile_offsets, uintptr_t out,
         Strides2 out_strides, int num_seqs, int num_tokens, int num_q_heads, int num_kv_heads,
         int head_dim, int dtype, double scale, bool causal, uintptr_t stream) {
        AttentionParams p =
            attention_params(q, q_strides, out, out_strides, cu_seqlens, tile_offsets, num_seqs,
                             num_tokens, num_q_heads, num_kv_heads, scale, 1, 0, 0);
        p.k = as_ptr<const void>(k);
        p.k_stride_token = k_strides[0];
        p.k_stride_head = k_strides[1];
        p.v = as_ptr<const void>(v);
        p.v_stride_token = v_strides[0];
        p.v_stride_head = v_strides[1];
        p.causal = causal;
        py::gil_scoped_release release;
        mmcore::kernels::launch_varlen_attention(p, as_dtype(dtype), head_dim, as_stream(stream));
      },
      py::arg("q"), py::arg("q_strides"), py::arg("k"), py::arg("k_strides"), py::arg("v"),
      py::arg("v_strides"), py::arg("cu_seqlens"), py::arg("tile_offsets"), py::arg("out"),
      py::arg("out_strides"), py::arg("num_seqs"), py::arg("num_tokens"), py::arg("num_q_heads"),
      py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("dtype"), py::arg("scale"),
      py::arg("causal"), py::arg("stream"),
      "Attention within each packed sequence (ViT), device pointers as ints.");
}

void bind_cache_write(py::module_& m) {
  m.def(
      "reshape_and_cache",
      [](uintptr_t key, Strides2 key_strides, uintptr_t value, Strides2 value_strides,
         uintptr_t key_cache, Strides3 kc_strides, uintptr_t value_cache, Strides3 vc_strides,
         uintptr_t slot_mapping, int num_tokens, int num_kv_heads, int head_dim, int block_size,
         int num_blocks, int src_dtype, int cache_dtype, uintptr_t stream, uintptr_t k_scale,
         uintptr_t v_scale) {
        mmcore::kernels::CacheWriteParams p;
        p.key = as_ptr<const void>(key);
        p.value = as_ptr<const void>(value);
        p.key_stride_token = key_strides[0];
        p.key_stride_head = key_strides[1];
        p.value_stride_token = value_strides[0];
        p.value_stride_head = value_strides[1];
        p.key_cache = as_ptr<void>(key_cache);
        p.value_cache = as_ptr<void>(value_cache);
        p.kc_stride_block = kc_strides[0];
        p.kc_stride_token = kc_strides[1];
        p.kc_stride_head = kc_strides[2];
        p.vc_stride_block = vc_strides[0];
        p.vc_stride_token = vc_strides[1];
        p.vc_stride_head = vc_strides[2];
        p.slot_mapping = as_ptr<const int64_t>(slot_mapping);
        p.num_tokens = num_tokens;
        p.num_kv_heads = num_kv_heads;
        p.head_dim = head_dim;
        p.block_size = block_size;
        p.num_blocks = num_blocks;
        p.k_scale = as_ptr<const float>(k_scale);
        p.v_scale = as_ptr<const float>(v_scale);
        py::gil_scoped_release release;
        mmcore::kernels::launch_reshape_and_cache(p, as_dtype(src_dtype), as_dtype(cache_dtype),
                                                  as_stream(stream));
      },
      py::arg("key"), py::arg("key_strides"), py::arg("value"), py::arg("value_strides"),
      py::arg("key_cache"), py::arg("kc_strides"), py::arg("value_cache"), py::arg("vc_strides"),
      py::arg("slot_mapping"), py::arg("num_tokens"), py::arg("num_kv_heads"), py::arg("head_dim"),
      py::arg("block_size"), py::arg("num_blocks"), py::arg("src_dtype"), py::arg("cache_dtype"),
      py::arg("stream"), py::arg("k_scale") = 0, py::arg("v_scale") = 0,
      "Write K/V rows into the paged caches by slot mapping (negative slot = skip); an FP8 cache "
      "(cache_dtype 3) stores x / scale[head] saturated to e4m3.");
}

// The rows of a residual add + RMSNorm (fused_add_rms_norm and its peer all-reduce variant).
mmcore::kernels::RmsNormParams add_norm_params(uintptr_t x, int64_t x_stride, uintptr_t residual,
                                               int64_t residual_stride, uintptr_t weight,
                                               uintptr_t out, int64_t out_stride, uintptr_t summed,
                                               int64_t summed_stride, int num_tokens, int hidden,
                                               double eps) {
  mmcore::kernels::RmsNormParams p;
  p.x = as_ptr<const void>(x);
  p.x_stride = x_stride;
  p.residual = as_ptr<const void>(residual);
  p.residual_stride = residual_stride;
  p.weight = as_ptr<const void>(weight);
  p.out = as_ptr<void>(out);
  p.out_stride = out_stride;
  p.summed = as_ptr<void>(summed);
  p.summed_stride = summed_stride;
  p.num_tokens = num_tokens;
  p.hidden = hidden;
  p.eps = static_cast<float>(eps);
  return p;
}

void bind_quant(py::module_& m) {
  m.def(
      "fp8_gemv",
      [](uintptr_t x, int64_t x_stride, uintptr_t weight, uintptr_t weight_scale, uintptr_t bias,
         uintptr_t out, int64_t out_stride, int rows, int n, int k, int dtype, uintptr_t stream) {
        mmcore::kernels::Fp8GemvParams p;
        p.x = as_ptr<const void>(x);
        p.x_stride = x_stride;
        p.weight = as_ptr<const void>(weight);
        p.weight_scale = as_ptr<const float>(weight_scale);
        p.bias = bias ? as_ptr<const void>(bias) : nullptr;
        p.out = as_ptr<void>(out);
        p.out_stride = out_stride;
        p.rows = rows;
        p.n = n;
        p.k = k;
        py::gil_scoped_release release;
        mmcore::kernels::launch_fp8_gemv(p, as_dtype(dtype), as_stream(stream));
      },
      py::arg("x"), py::arg("x_stride"), py::arg("weight"), py::arg("weight_scale"),
      py::arg("bias"), py::arg("out"), py::arg("out_stride"), py::arg("rows"), py::arg("n"),
      py::arg("k"), py::arg("dtype"), py::arg("stream"),
      "out = x @ (e4m3 weight * scale).T (+ bias) for at most 8 rows (device pointers as ints).");
  m.def(
      "per_token_quant_fp8",
      [](uintptr_t x, int64_t x_stride, uintptr_t out, uintptr_t scales, int num_tokens, int hidden,
         double min_scale, int dtype, uintptr_t stream) {
        mmcore::kernels::PerTokenQuantParams p;
        p.x = as_ptr<const void>(x);
        p.x_stride = x_stride;
        p.out = as_ptr<void>(out);
        p.scales = as_ptr<float>(scales);
        p.num_tokens = num_tokens;
        p.hidden = hidden;
        p.min_scale = static_cast<float>(min_scale);
        py::gil_scoped_release release;
        mmcore::kernels::launch_per_token_quant_fp8(p, as_dtype(dtype), as_stream(stream));
      },
      py::arg("x"), py::arg("x_stride"), py::arg("out"), py::arg("scales"), py::arg("num_tokens"),
      py::arg("hidden"), py::arg("min_scale"), py::arg("dtype"), py::arg("stream"),
      "Per-row FP8 e4m3 quantisation of [num_tokens, hidden] (device pointers as ints).");
}

void bind_gemv(py::module_& m) {
  m.def(
      "dense_gemv",
      [](uintptr_t x, int64_t x_stride, uintptr_t weight, int64_t w_stride, uintptr_t bias,
         uintptr_t out, int64_t out_stride, int rows, int n, int k, int dtype, uintptr_t stream,
         bool silu_mul) {
        mmcore::kernels::DenseGemvParams p;
        p.x = as_ptr<const void>(x);
        p.x_stride = x_stride;
        p.weight = as_ptr<const void>(weight);
        p.w_stride = w_stride;
        p.bias = bias ? as_ptr<const void>(bias) : nullptr;
        p.out = as_ptr<void>(out);
        p.out_stride = out_stride;
        p.rows = rows;
        p.n = n;
        p.k = k;
        p.silu_mul = silu_mul;
        py::gil_scoped_release release;
        mmcore::kernels::launch_dense_gemv(p, as_dtype(dtype), as_stream(stream));
      },
      py::arg("x"), py::arg("x_stride"), py::arg("weight"), py::arg("w_stride"), py::arg("bias"),
      py::arg("out"), py::arg("out_stride"), py::arg("rows"), py::arg("n"), py::arg("k"),
      py::arg("dtype"), py::arg("stream"), py::arg("silu_mul") = false,
      "out = x @ weight.T (+ bias) for at most 4 rows, 16-bit weights (device pointers as ints); "
      "silu_mul: weight rows are [gate | up] and out = silu(gate) * up.");
}

// RotaryParams fields shared by the plain and the cache-writing rotary bindings.
mmcore::kernels::RotaryParams rotary_params(uintptr_t positions, bool positions_int64,
                                            std::array<int, 3> mrope_section,
                                            int64_t positions_row_stride, uintptr_t query,
                                            Strides2 q_strides, uintptr_t key, Strides2 k_strides,
                                            uintptr_t query_out, Strides2 qo_strides,
                                            uintptr_t cos_sin_cache, int64_t cache_stride,
                                            int max_positions, int num_tokens, int num_q_heads,
                                            int num_kv_heads, int head_dim) {
  mmcore::kernels::RotaryParams p;
  p.positions = as_ptr<const void>(positions);
  p.positions_int64 = positions_int64;
  p.positions_row_stride = positions_row_stride;
  for (int i = 0; i < 3; ++i) p.mrope_section[i] = mrope_section[i];
  p.query = as_ptr<const void>(query);
  p.q_stride_token = q_strides[0];
  p.q_stride_head = q_strides[1];
  p.key = as_ptr<const void>(key);
  p.k_stride_token = k_strides[0];
  p.k_stride_head = k_strides[1];
  p.query_out = as_ptr<void>(query_out);
  p.qo_stride_token = qo_strides[0];
  p.qo_stride_head = qo_strides[1];
  p.cos_sin_cache = as_ptr<const void>(cos_sin_cache);
  p.cache_stride = cache_stride;
  p.max_positions = max_positions;
  p.num_tokens = num_tokens;
  p.num_q_heads = num_q_heads;
  p.num_kv_heads = num_kv_heads;
  p.head_dim = head_dim;
  return p;
}

void bind_fused(py::module_& m) {
  m.def(
      "rms_norm",
      [](uintptr_t x, int64_t x_stride, uintptr_t weight, uintptr_t out, int64_t out_stride,
         int num_tokens, int hidden, double eps, int dtype, uintptr_t stream) {
        mmcore::kernels::RmsNormParams p;
        p.x = as_ptr<const void>(x);
        p.x_stride = x_stride;
        p.weight = as_ptr<const void>(weight);
        p.out = as_ptr<void>(out);
        p.out_stride = out_stride;
        p.num_tokens = num_tokens;
        p.hidden = hidden;
        p.eps = static_cast<float>(eps);
        py::gil_scoped_release release;
        mmcore::kernels::launch_rms_norm(p, as_dtype(dtype), as_stream(stream));
      },
      py::arg("x"), py::arg("x_stride"), py::arg("weight"), py::arg("out"), py::arg("out_stride"),
      py::arg("num_tokens"), py::arg("hidden"), py::arg("eps"), py::arg("dtype"), py::arg("stream"),
      "RMSNorm of [num_tokens, hidden] rows (device pointers as ints).");
  m.def(
      "fused_add_rms_norm",
      [](uintptr_t x, int64_t x_stride, uintptr_t residual, int64_t residual_stride,
         uintptr_t weight, uintptr_t out, int64_t out_stride, uintptr_t summed,
         int64_t summed_stride, int num_tokens, int hidden, double eps, int dtype,
         uintptr_t stream) {
        const auto p = add_norm_params(x, x_stride, residual, residual_stride, weight, out,
                                       out_stride, summed, summed_stride, num_tokens, hidden, eps);
        py::gil_scoped_release release;
        mmcore::kernels::launch_fused_add_rms_norm(p, as_dtype(dtype), as_stream(stream));
      },
      py::arg("x"), py::arg("x_stride"), py::arg("residual"), py::arg("residual_stride"),
      py::arg("weight"), py::arg("out"), py::arg("out_stride"), py::arg("summed"),
      py::arg("summed_stride"), py::arg("num_tokens"), py::arg("hidden"), py::arg("eps"),
      py::arg("dtype"), py::arg("stream"),
      "summed = residual + x and out = RMSNorm(summed), one launch (device pointers as ints).");
  m.def(
      "peer_add_rms_norm",
      [](uintptr_t x, int64_t x_stride, uintptr_t residual, int64_t residual_stride,
         uintptr_t weight, uintptr_t out, int64_t out_stride, uintptr_t summed,
         int64_t summed_stride, int num_tokens, int hidden, double eps, uintptr_t buffers,
         uintptr_t signal_pads, int64_t buffer_offset, int64_t half_elems, uintptr_t call_counters,
         int rank, int world_size, int dtype, uintptr_t stream) {
        mmcore::kernels::PeerAddRmsNormParams p;
        p.norm = add_norm_params(x, x_stride, residual, residual_stride, weight, out, out_stride,
                                 summed, summed_stride, num_tokens, hidden, eps);
        p.buffers = as_ptr<void* const>(buffers);
        p.signal_pads = as_ptr<uint32_t* const>(signal_pads);
        p.buffer_offset = buffer_offset;
        p.half_elems = half_elems;
        p.call_counters = as_ptr<uint32_t>(call_counters);
        p.rank = rank;
        p.world_size = world_size;
        py::gil_scoped_release release;
        mmcore::kernels::launch_peer_add_rms_norm(p, as_dtype(dtype), as_stream(stream));
      },
      py::arg("x"), py::arg("x_stride"), py::arg("residual"), py::arg("residual_stride"),
      py::arg("weight"), py::arg("out"), py::arg("out_stride"), py::arg("summed"),
      py::arg("summed_stride"), py::arg("num_tokens"), py::arg("hidden"), py::arg("eps"),
      py::arg("buffers"), py::arg("signal_pads"), py::arg("buffer_offset"), py::arg("half_elems"),
      py::arg("call_counters"), py::arg("rank"), py::arg("world_size"), py::arg("dtype"),
      py::arg("stream"),
      "summed = residual + all-reduce(x) over peer buffers, out = RMSNorm(summed): one launch.");
  m.attr("PEER_NORM_BLOCKS") = mmcore::kernels::kPeerNormBlocks;
  m.def(
      "silu_and_mul",
      [](uintptr_t x, int64_t x_stride, uintptr_t out, int64_t out_stride, int num_tokens,
         int intermediate, int dtype, uintptr_t stream) {
        mmcore::kernels::SiluAndMulParams p;
        p.x = as_ptr<const void>(x);
        p.x_stride = x_stride;
        p.out = as_ptr<void>(out);
        p.out_stride = out_stride;
        p.num_tokens = num_tokens;
        p.intermediate = intermediate;
        py::gil_scoped_release release;
        mmcore::kernels::launch_silu_and_mul(p, as_dtype(dtype), as_stream(stream));
      },
      py::arg("x"), py::arg("x_stride"), py::arg("out"), py::arg("out_stride"),
      py::arg("num_tokens"), py::arg("intermediate"), py::arg("dtype"), py::arg("stream"),
      "silu(x[:, :I]) * x[:, I:] of [num_tokens, 2I] rows (device pointers as ints).");
  m.def(
      "rotary_embedding",
      [](uintptr_t positions, bool positions_int64, uintptr_t query, Strides2 q_strides,
         uintptr_t key, Strides2 k_strides, uintptr_t query_out, Strides2 qo_strides,
         uintptr_t key_out, Strides2 ko_strides, uintptr_t cos_sin_cache, int64_t cache_stride,
         int max_positions, int num_tokens, int num_q_heads, int num_kv_heads, int head_dim,
         int dtype, uintptr_t stream, std::array<int, 3> mrope_section,
         int64_t positions_row_stride, bool float_math) {
        auto p = rotary_params(positions, positions_int64, mrope_section, positions_row_stride,
                               query, q_strides, key, k_strides, query_out, qo_strides,
                               cos_sin_cache, cache_stride, max_positions, num_tokens, num_q_heads,
                               num_kv_heads, head_dim);
        p.float_math = float_math;
        p.key_out = as_ptr<void>(key_out);
        p.ko_stride_token = ko_strides[0];
        p.ko_stride_head = ko_strides[1];
        py::gil_scoped_release release;
        mmcore::kernels::launch_rotary_embedding(p, as_dtype(dtype), as_stream(stream));
      },
      py::arg("positions"), py::arg("positions_int64"), py::arg("query"), py::arg("q_strides"),
      py::arg("key"), py::arg("k_strides"), py::arg("query_out"), py::arg("qo_strides"),
      py::arg("key_out"), py::arg("ko_strides"), py::arg("cos_sin_cache"), py::arg("cache_stride"),
      py::arg("max_positions"), py::arg("num_tokens"), py::arg("num_q_heads"),
      py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("dtype"), py::arg("stream"),
      py::arg("mrope_section") = std::array<int, 3>{0, 0, 0}, py::arg("positions_row_stride") = 0,
      py::arg("float_math") = false,
      "NeoX rotary embedding of q/k into new tensors (device pointers as ints); with a non-zero "
      "mrope_section, positions are 3 rows positions_row_stride apart (M-RoPE); float_math: a "
      "float32 cache and float32 arithmetic rounded once.");
  m.def(
      "rotary_embedding_and_cache",
      [](uintptr_t positions, bool positions_int64, uintptr_t query, Strides2 q_strides,
         uintptr_t key, Strides2 k_strides, uintptr_t value, Strides2 v_strides,
         uintptr_t query_out, Strides2 qo_strides, uintptr_t cos_sin_cache, int64_t cache_stride,
         int max_positions, uintptr_t key_cache, Strides3 kc_strides, uintptr_t value_cache,
         Strides3 vc_strides, uintptr_t slot_mapping, int block_size, int num_blocks,
         int num_tokens, int num_q_heads, int num_kv_heads, int head_dim, int dtype,
         uintptr_t stream, std::array<int, 3> mrope_section, int64_t positions_row_stride) {
        auto p = rotary_params(positions, positions_int64, mrope_section, positions_row_stride,
                               query, q_strides, key, k_strides, query_out, qo_strides,
                               cos_sin_cache, cache_stride, max_positions, num_tokens, num_q_heads,
                               num_kv_heads, head_dim);
        p.value = as_ptr<const void>(value);
        p.v_stride_token = v_strides[0];
        p.v_stride_head = v_strides[1];
        p.key_cache = as_ptr<void>(key_cache);
        p.kc_stride_block = kc_strides[0];
        p.kc_stride_token = kc_strides[1];
        p.kc_stride_head = kc_strides[2];
        p.value_cache = as_ptr<void>(value_cache);
        p.vc_stride_block = vc_strides[0];
        p.vc_stride_token = vc_strides[1];
        p.vc_stride_head = vc_strides[2];
        p.slot_mapping = as_ptr<const int64_t>(slot_mapping);
        p.block_size = block_size;
        p.num_blocks = num_blocks;
        // launch_rotary_embedding takes a null key_cache for the unfused op: refuse it here.
        if (num_tokens > 0 && !p.key_cache)
          throw std::invalid_argument("rotary_embedding_and_cache: null key_cache");
        py::gil_scoped_release release;
        mmcore::kernels::launch_rotary_embedding(p, as_dtype(dtype), as_stream(stream));
      },
      py::arg("positions"), py::arg("positions_int64"), py::arg("query"), py::arg("q_strides"),
      py::arg("key"), py::arg("k_strides"), py::arg("value"), py::arg("v_strides"),
      py::arg("query_out"), py::arg("qo_strides"), py::arg("cos_sin_cache"),
      py::arg("cache_stride"), py::arg("max_positions"), py::arg("key_cache"),
      py::arg("kc_strides"), py::arg("value_cache"), py::arg("vc_strides"), py::arg("slot_mapping"),
      py::arg("block_size"), py::arg("num_blocks"), py::arg("num_tokens"), py::arg("num_q_heads"),
      py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("dtype"), py::arg("stream"),
      py::arg("mrope_section") = std::array<int, 3>{0, 0, 0}, py::arg("positions_row_stride") = 0,
      "rotary_embedding of q into a new tensor and of k straight into the paged key cache at "
      "slot_mapping (int64; negative = skip), v copied into the value cache: the rotary kernel "
      "and reshape_and_cache in one launch (caches of q's dtype).");
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "mmcore CUDA kernels";
  m.def("device_count", &mmcore::kernels::device_count, "Number of visible CUDA devices.");
  m.def(
      "probe_saxpy",
      [](float a, py::array_t<float, py::array::c_style | py::array::forcecast> x,
         py::array_t<float, py::array::c_style | py::array::forcecast> y) {
        if (x.size() != y.size())
          throw std::invalid_argument("probe_saxpy: x and y differ in size");
        py::array_t<float> out(x.size());
        const std::string err = mmcore::kernels::probe_saxpy(
            static_cast<int>(x.size()), a, x.data(), y.data(), out.mutable_data());
        if (!err.empty()) throw std::runtime_error("probe_saxpy: " + err);
        return out;
      },
      py::arg("a"), py::arg("x"), py::arg("y"), "a * x + y computed by a CUDA kernel.");
  bind_attention(m);
  bind_cache_write(m);
  bind_fused(m);
  bind_quant(m);
  bind_gemv(m);
}
