// Block manager micro-benchmark: 1,024 requests x 2,048-token prompts, half of them repeating an
// earlier prompt (prefix-cache hit). Times prefix lookup (hashing included), allocation of the
// prompt's slots, caching of its full blocks, one-token decode appends and freeing.
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "engine/block_manager.h"

namespace {

using Clock = std::chrono::steady_clock;
using mmcore::BlockManager;
using mmcore::ComputedBlocks;
using mmcore::Request;

constexpr int kNumRequests = 1024;
constexpr int kPromptLen = 2048;
constexpr int kBlockSize = 16;
constexpr int kRounds = 5;
constexpr int kDecodeSteps = 32;

double ns_since(Clock::time_point start) {
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count();
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  std::vector<std::vector<mmcore::TokenId>> prompts(kNumRequests / 2,
                                                    std::vector<mmcore::TokenId>(kPromptLen));
  const int num_blocks = kNumRequests * (kPromptLen + kDecodeSteps) / kBlockSize + 64;
  BlockManager bm({num_blocks, kBlockSize, true});

  double lookup_ns = 0, alloc_ns = 0, cache_ns = 0, append_ns = 0, free_ns = 0;
  int64_t hits = 0;
  std::vector<Request> requests(kNumRequests);
  for (int round = 0; round < kRounds; ++round) {
    // Fresh prompts each round, so that exactly the second half of the requests hits.
    for (auto& p : prompts) {
      for (auto& t : p) t = static_cast<mmcore::TokenId>(rng() % 32000);
    }
    for (int i = 0; i < kNumRequests; ++i) {
      Request& r = requests[i];
      r = Request{};
      r.id = round * kNumRequests + i;
      // Requests i and i + 512 share a prompt: the second is a full prefix hit.
      r.token_ids.reserve(kPromptLen + kDecodeSteps);  // decode appends must not reallocate
      r.token_ids = prompts[i % prompts.size()];
      r.num_prompt_tokens = kPromptLen;
      auto t0 = Clock::now();
      ComputedBlocks hit = bm.get_computed_blocks(r);
      lookup_ns += ns_since(t0);
      hits += hit.num_tokens > 0;
      t0 = Clock::now();
      auto got = bm.allocate_slots(r, kPromptLen - hit.num_tokens, hit);
      alloc_ns += ns_since(t0);
      if (!got) {
        std::fprintf(stderr, "allocation failed\n");
        return 1;
      }
      r.num_computed_tokens = kPromptLen;
      t0 = Clock::now();
      bm.cache_full_blocks(r, kPromptLen);
      cache_ns += ns_since(t0);
    }
    auto t0 = Clock::now();
    for (int step = 0; step < kDecodeSteps; ++step) {
      for (Request& r : requests) {
        r.token_ids.push_back(step);
        if (!bm.allocate_slots(r, 1)) return 1;
        ++r.num_computed_tokens;
      }
    }
    append_ns += ns_since(t0);
    t0 = Clock::now();
    for (Request& r : requests) bm.free(r);
    free_ns += ns_since(t0);
    bm.check_invariants();
  }
  const double n = static_cast<double>(kRounds) * kNumRequests;
  std::printf("block manager: %d requests x %d tokens, block_size %d, %d rounds, %.0f%% hits\n",
              kNumRequests, kPromptLen, kBlockSize, kRounds, 100.0 * hits / n);
  std::printf("| operation | ns per call |\n|---|---:|\n");
  std::printf("| get_computed_blocks (hash 128 blocks + lookup) | %.0f |\n", lookup_ns / n);
  std::printf("| allocate_slots (2,048-token prompt) | %.0f |\n", alloc_ns / n);
  std::printf("| cache_full_blocks (2,048-token prompt) | %.0f |\n", cache_ns / n);
  std::printf("| allocate_slots (1 decode token) | %.1f |\n", append_ns / (n * kDecodeSteps));
  std::printf("| free (129-130 blocks) | %.0f |\n", free_ns / n);
  return 0;
}
