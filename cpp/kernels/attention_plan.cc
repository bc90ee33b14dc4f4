// Variant and KV-split choice of the attention launches (see attention_plan.h).
#include "kernels/attention_plan.h"

#include <algorithm>
#include <cstdint>

namespace mmcore::kernels {
namespace {

constexpr int kPrefillRows = 128;
constexpr int kFixedTilesPerCta = 6;  // a split CTA's fixed work, in 64-key tiles

}  // namespace

int attention_block_rows(AttentionVariant variant, int head_dim) {
  if (variant == AttentionVariant::kPagedDecode) return kPagedDecodeRows;
  return head_dim > 128 ? kPrefillRows / 2 : kPrefillRows;  // VariantShape: one 16-row tile/warp
}

int attention_num_splits(AttentionVariant variant, int head_dim, int num_seqs, int num_tokens,
                         int num_kv_heads, int group, int max_seq_len, int num_sms,
                         int min_tiles_per_split) {
  const int rows = attention_block_rows(variant, head_dim);
  const int64_t row_tiles = variant == AttentionVariant::kPagedDecode
                                ? num_seqs
                                : (static_cast<int64_t>(num_tokens) * group + rows - 1) / rows;
  const int64_t ctas = std::max<int64_t>(1, row_tiles * num_kv_heads);
  // Resident CTAs per SM (registers, shared memory): 2 of every variant.
  const int64_t slots = static_cast<int64_t>(std::max(num_sms, 1)) * 2;
  // Prefill rows already fill the card; their float32 partials would be large.
  if (variant != AttentionVariant::kPagedDecode && ctas >= slots) return 1;
  const int64_t key_tiles =
      std::max<int64_t>(1, (max_seq_len + kAttentionKeysPerTile - 1) / kAttentionKeysPerTile);
  const int64_t max_useful =
      std::clamp<int64_t>(key_tiles / std::max(min_tiles_per_split, 1), 1, kAttentionMaxSplits);
  // Equal-work CTAs run in waves of `slots`, each CTA its share of the key tiles plus a fixed
  // part worth ~6 tiles (launch, queries, first loads, partial write), each split adding ~3% (the
  // merge reads every split). Fitted to batch-1 decodes on an H200 (bench/RESULTS.md, session 8):
  // 1.4 us a tile, 8.3 us fixed.
  int best = 1;
  double best_cost = 0.0;
  for (int64_t s = 1; s <= max_useful; ++s) {
    const int64_t waves = (ctas * s + slots - 1) / slots;
    const int64_t tiles_per_split = (key_tiles + s - 1) / s;
    const double cost =
        static_cast<double>(waves * (tiles_per_split + kFixedTilesPerCta)) * (1.0 + 0.03 * (s - 1));
    if (s == 1 || cost < best_cost) {
      best = static_cast<int>(s);
      best_cost = cost;
    }
  }
  return best;
}

PagedLaunchPlan plan_paged_attention(int head_dim, int num_seqs, int num_tokens, int num_kv_heads,
                                     int group, int min_query_len, int max_query_len,
                                     int max_seq_len, int num_sms, int min_tiles_per_split) {
  PagedLaunchPlan plan;
  if (static_cast<int64_t>(std::max(min_query_len, 0)) * group <= kPagedDecodeRows) {
    plan.decode_splits =
        attention_num_splits(AttentionVariant::kPagedDecode, head_dim, num_seqs, num_tokens,
                             num_kv_heads, group, max_seq_len, num_sms, min_tiles_per_split);
  }
  if (static_cast<int64_t>(max_query_len) * group > kPagedDecodeRows) {
    plan.prefill_splits =
        attention_num_splits(AttentionVariant::kPagedPrefill, head_dim, num_seqs, num_tokens,
                             num_kv_heads, group, max_seq_len, num_sms, min_tiles_per_split);
  }
  return plan;
}

}  // namespace mmcore::kernels
