// Hopper (sm90a) prefill / packed attention for head dim 128 (16-bit K/V, and FP8 paged caches);
// empty without CUTLASS or sm90a.
#include "kernels/attention.h"
#if MMCORE_SM90A_ATTENTION
#include "kernels/attention_sm90_launch.cuh"

namespace mmcore::kernels {
template cudaError_t run_attention_sm90<128>(const AttentionParams&, DType, bool, cudaStream_t);
}  // namespace mmcore::kernels
#endif
