// Attention kernels for head dim 32 (one translation unit per head dim: parallel builds).
#include "kernels/attention_dispatch.cuh"

namespace mmcore::kernels {
template cudaError_t run_attention<32>(const AttentionParams&, DType, AttentionVariant,
                                       cudaStream_t);
}  // namespace mmcore::kernels
