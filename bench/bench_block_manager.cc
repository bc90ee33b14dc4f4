// mmcore-bench-block-manager: cost of the KV block manager's calls for N requests x L-token
// prompts, a fraction of which repeat an earlier prompt (prefix-cache hit). Times prefix lookup
// (hashing included), allocation of the prompt's slots, caching of its full blocks, one-token
// decode appends and freeing. `--json` prints one JSON object instead of a table.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "bench_args.h"
#include "engine/block_manager.h"

namespace {

using Clock = std::chrono::steady_clock;
using mmcore::BlockManager;
using mmcore::ComputedBlocks;
using mmcore::Request;

struct Workload {
  int64_t requests = 1024;
  int64_t prompt_len = 2048;
  int64_t block_size = 16;
  int64_t rounds = 5;
  int64_t decode_steps = 32;
  double hit_rate = 0.5;  // fraction of requests whose prompt repeats an earlier one of the round
  int64_t seed = 0;
  bool json = false;
};

double ns_since(Clock::time_point start) {
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  Workload w;
  mmcore::bench::BenchArgs args(
      "mmcore-bench-block-manager",
      "Time prefix lookup, allocation, caching, decode appends and freeing of KV blocks.");
  args.add_int("requests", &w.requests, "requests per round");
  args.add_int("prompt-len", &w.prompt_len, "prompt tokens per request");
  args.add_int("block-size", &w.block_size, "KV block size in tokens");
  args.add_int("rounds", &w.rounds, "rounds (fresh prompts each round)");
  args.add_int("decode-steps", &w.decode_steps, "one-token appends per request per round");
  args.add_double("hit-rate", &w.hit_rate, "fraction of requests repeating an earlier prompt");
  args.add_int("seed", &w.seed, "random seed of the prompts");
  args.add_flag("json", &w.json, "print one JSON object instead of a table");
  args.parse(argc, argv);
  args.require(w.requests >= 1 && w.requests <= (1 << 20), "--requests must be in 1..1048576");
  args.require(w.prompt_len >= 2 && w.prompt_len <= (1 << 20),
               "--prompt-len must be in 2..1048576");
  args.require(w.block_size >= 1 && w.block_size <= 1024, "--block-size must be in 1..1024");
  args.require(w.rounds >= 1, "--rounds must be >= 1");
  args.require(w.decode_steps >= 0, "--decode-steps must be >= 0");
  args.require(w.hit_rate >= 0 && w.hit_rate <= 1, "--hit-rate must be in [0, 1]");
  args.require(w.requests * ((w.prompt_len + w.decode_steps) / w.block_size + 2) < (1LL << 31),
               "--requests x blocks per request must stay below 2^31 blocks");

  // Requests [0, num_unique) get fresh prompts; the rest repeat one of them (a full hit).
  const auto num_requests = static_cast<int32_t>(w.requests);
  const auto prompt_len = static_cast<int32_t>(w.prompt_len);
  const auto num_unique = std::max<int32_t>(
      1, num_requests - static_cast<int32_t>(w.hit_rate * static_cast<double>(num_requests)));
  std::mt19937 rng(static_cast<uint32_t>(w.seed));
  std::vector<std::vector<mmcore::TokenId>> prompts(static_cast<size_t>(num_unique),
                                                    std::vector<mmcore::TokenId>(prompt_len));
  const auto bs = static_cast<int32_t>(w.block_size);
  const auto num_blocks =
      static_cast<int32_t>(w.requests * ((w.prompt_len + w.decode_steps) / bs + 2) + 64);
  BlockManager bm({num_blocks, bs, true});

  double lookup_ns = 0, alloc_ns = 0, cache_ns = 0, append_ns = 0, free_ns = 0;
  int64_t hits = 0;
  std::vector<Request> requests(static_cast<size_t>(num_requests));
  for (int64_t round = 0; round < w.rounds; ++round) {
    for (auto& p : prompts) {
      for (auto& t : p) t = static_cast<mmcore::TokenId>(rng() % 32000);
    }
    for (int32_t i = 0; i < num_requests; ++i) {
      Request& r = requests[static_cast<size_t>(i)];
      r = Request{};
      r.id = round * num_requests + i;
      r.token_ids.reserve(static_cast<size_t>(prompt_len + w.decode_steps));  // no reallocation
      r.token_ids = prompts[static_cast<size_t>(i % num_unique)];
      r.num_prompt_tokens = prompt_len;
      auto t0 = Clock::now();
      ComputedBlocks hit = bm.get_computed_blocks(r);
      lookup_ns += ns_since(t0);
      hits += hit.num_tokens > 0;
      t0 = Clock::now();
      auto got = bm.allocate_slots(r, prompt_len - hit.num_tokens, hit);
      alloc_ns += ns_since(t0);
      if (!got) {
        std::fprintf(stderr, "allocation failed\n");
        return 1;
      }
      r.num_computed_tokens = prompt_len;
      t0 = Clock::now();
      bm.cache_full_blocks(r, prompt_len);
      cache_ns += ns_since(t0);
    }
    auto t0 = Clock::now();
    for (int64_t step = 0; step < w.decode_steps; ++step) {
      for (Request& r : requests) {
        r.token_ids.push_back(static_cast<mmcore::TokenId>(step));
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
  const double n = static_cast<double>(w.rounds) * num_requests;
  const double per_append = w.decode_steps > 0 ? append_ns / (n * w.decode_steps) : 0.0;
  const int64_t prompt_blocks = w.prompt_len / bs;
  if (w.json) {
    std::printf(
        "{\"benchmark\": \"block_manager\", \"workload\": {\"requests\": %lld, \"prompt_len\": "
        "%lld, \"block_size\": %lld, \"rounds\": %lld, \"decode_steps\": %lld, \"hit_rate\": %g, "
        "\"seed\": %lld}, \"results\": {\"measured_hit_rate\": %.4f, "
        "\"get_computed_blocks_ns\": %.1f, \"allocate_prompt_ns\": %.1f, "
        "\"cache_full_blocks_ns\": %.1f, \"allocate_decode_token_ns\": %.2f, \"free_ns\": %.1f}}\n",
        static_cast<long long>(w.requests), static_cast<long long>(w.prompt_len),
        static_cast<long long>(w.block_size), static_cast<long long>(w.rounds),
        static_cast<long long>(w.decode_steps), w.hit_rate, static_cast<long long>(w.seed),
        static_cast<double>(hits) / n, lookup_ns / n, alloc_ns / n, cache_ns / n, per_append,
        free_ns / n);
    return 0;
  }
  std::printf(
      "block manager: %lld requests x %lld tokens, block_size %lld, %lld rounds, %.0f%% hits\n",
      static_cast<long long>(w.requests), static_cast<long long>(w.prompt_len),
      static_cast<long long>(w.block_size), static_cast<long long>(w.rounds),
      100.0 * static_cast<double>(hits) / n);
  std::printf("| operation | ns per call |\n|---|---:|\n");
  std::printf("| get_computed_blocks (hash %lld blocks + lookup) | %.0f |\n",
              static_cast<long long>(prompt_blocks), lookup_ns / n);
  std::printf("| allocate_slots (%lld-token prompt) | %.0f |\n",
              static_cast<long long>(w.prompt_len), alloc_ns / n);
  std::printf("| cache_full_blocks (%lld-token prompt) | %.0f |\n",
              static_cast<long long>(w.prompt_len), cache_ns / n);
  std::printf("| allocate_slots (1 decode token) | %.1f |\n", per_append);
  std::printf("| free (%lld blocks) | %.0f |\n",
              static_cast<long long>((w.prompt_len + w.decode_steps + bs - 1) / bs), free_ns / n);
  return 0;
}
