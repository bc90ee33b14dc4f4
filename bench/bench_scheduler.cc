// mmcore-bench-scheduler: steady-state cost of one scheduler step (schedule() +
// update_from_output()) with about N running requests. Prompts hold text around one image
// (identifiers drawn from a pool, so the encoder cache mostly hits); a fraction of requests may
// repeat an earlier prompt whole (prefix-cache hits); arrivals are Poisson at the rate that
// replaces finishing requests. `--json` prints one JSON object instead of a table.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "bench_args.h"
#include "engine/scheduler.h"

namespace {

using Clock = std::chrono::steady_clock;
using mmcore::Request;
using mmcore::Scheduler;

struct Workload {
  std::vector<int64_t> running = {256, 1024};
  int64_t steps = 2000;
  int64_t warmup = 400;
  int64_t prompt_len = 96;   // text tokens around the image
  int64_t image_len = 160;   // image placeholder tokens (= embeddings); 0: text only
  int64_t num_images = 64;   // distinct image identifiers
  int64_t output_len = 128;  // mean generated tokens (uniform in [output_len / 2, 1.5 output_len))
  double hit_rate = 0.0;     // fraction of requests repeating an earlier prompt whole
  int64_t block_size = 16;
  int64_t max_batched_tokens = 8192;
  int64_t seed = 1;
  bool prefix_caching = true;
  // Hybrid KV cache (e.g. Gemma 3: 5 sliding groups per full group): groups with this window.
  int64_t sliding_groups = 0;
  int64_t sliding_window = 1024;
  // No arrivals and no finishes: every request decodes through the measured steps (after its
  // prefill in the warm-up), so each step is one token per running request.
  bool decode_only = false;
  bool json = false;
};

// Draws requests; keeps recent prompts so that a repeat can copy one (a prefix-cache hit).
class RequestFactory {
 public:
  RequestFactory(const Workload& w, std::mt19937& rng)
      : w_(w), rng_(rng), repeat_rng_(static_cast<uint32_t>(w.seed) + 1) {}

  Request make(mmcore::RequestId id) {
    Request r;
    r.id = id;
    const bool repeat = !recent_.empty() && w_.hit_rate > 0 &&
                        std::uniform_real_distribution<double>(0, 1)(repeat_rng_) < w_.hit_rate;
    if (repeat) {
      const Request& old = recent_[repeat_rng_() % recent_.size()];
      r.token_ids = old.token_ids;
      r.features = old.features;
    } else {
      const int before = static_cast<int>(rng_() % static_cast<uint32_t>(w_.prompt_len));
      r.token_ids.resize(static_cast<size_t>(w_.prompt_len + w_.image_len));
      for (auto& t : r.token_ids) t = static_cast<mmcore::TokenId>(rng_() % 32000);
      if (w_.image_len > 0) {
        mmcore::MMFeature f;
        f.identifier = "image-" + std::to_string(rng_() % static_cast<uint32_t>(w_.num_images));
        f.offset = before;
        f.length = static_cast<int32_t>(w_.image_len);
        f.num_embeds = f.length;
        r.features.push_back(f);
      }
    }
    const auto mean = static_cast<uint32_t>(w_.output_len);
    r.sampling.max_tokens = w_.decode_only ? static_cast<int32_t>(w_.warmup + w_.steps + 1)
                                           : static_cast<int32_t>(mean / 2 + rng_() % mean);
    r.sampling.ignore_eos = true;
    if (w_.hit_rate > 0 && !repeat) {
      recent_.push_back(r);
      if (recent_.size() > 64) recent_.pop_front();
    }
    return r;
  }

 private:
  const Workload& w_;
  std::mt19937& rng_;  // shared with the arrivals: one request stream per seed
  std::mt19937 repeat_rng_;
  std::deque<Request> recent_;
};

struct Result {
  int64_t target_running;
  double mean_us, p50_us, p99_us, cpu_us, reqs, tokens;
  int64_t preemptions;
  double prefix_hit_rate, encoder_hit_rate;
};

// CPU time of this thread: excludes time the OS gave to other processes on a shared machine.
double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

Result run(const Workload& w, int64_t target_running) {
  const int64_t per_request =
      w.prompt_len + w.image_len + (w.decode_only ? w.warmup + w.steps + 1 : 2 * w.output_len);
  mmcore::SchedulerConfig c;
  c.block_size = static_cast<int32_t>(w.block_size);
  c.max_num_seqs = static_cast<int32_t>(target_running);
  c.max_num_batched_tokens = static_cast<int32_t>(w.max_batched_tokens);
  c.enable_prefix_caching = w.prefix_caching;
  c.max_model_len = static_cast<int32_t>(std::max<int64_t>(4096, per_request));
  c.num_blocks = static_cast<int32_t>(target_running * per_request / w.block_size * 5 / 4 *
                                      (1 + w.sliding_groups));
  if (w.sliding_groups > 0) {
    c.kv_group_windows.assign(static_cast<size_t>(w.sliding_groups) + 1,
                              static_cast<int32_t>(w.sliding_window));
    c.kv_group_windows[0] = -1;
  }
  c.encoder_budget = static_cast<int32_t>(std::max<int64_t>(8192, w.image_len));
  c.encoder_cache_size =
      std::max<int64_t>(64, w.num_images) * std::max<int64_t>(1, w.image_len) * 2;
  Scheduler s(c);
  std::mt19937 rng(static_cast<uint32_t>(w.seed));
  RequestFactory factory(w, rng);
  // Poisson arrivals at the rate that replaces finishing requests.
  std::poisson_distribution<int> arrivals(static_cast<double>(target_running) /
                                          static_cast<double>(w.output_len));
  mmcore::RequestId next_id = 0;
  for (int64_t i = 0; i < target_running; ++i) s.add_request(factory.make(next_id++));
  std::vector<mmcore::TokenId> sampled;
  std::vector<double> times;
  double reqs = 0, tokens = 0, cpu = 0;
  mmcore::SchedulerStats before{};
  for (int64_t step = 0; step < w.warmup + w.steps; ++step) {
    if (step == w.warmup) before = s.stats();
    const int n = w.decode_only ? 0 : arrivals(rng);
    for (int i = 0; i < n; ++i) s.add_request(factory.make(next_id++));
    const double c0 = thread_cpu_us();
    const auto t0 = Clock::now();
    const mmcore::SchedulerOutput& out = s.schedule();
    sampled.assign(out.sampling_req_ids.size(), 7);
    (void)s.update_from_output(out, sampled);
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    const double cpu_us = thread_cpu_us() - c0;
    if (step >= w.warmup) {
      if (w.decode_only && out.num_tokens() != out.num_reqs()) {
        std::fprintf(stderr, "--decode-only: step %lld still prefills; raise --warmup\n",
                     static_cast<long long>(step));
        std::exit(2);
      }
      times.push_back(us);
      cpu += cpu_us;
      reqs += out.num_reqs();
      tokens += out.num_tokens();
    }
  }
  s.check_invariants();
  const mmcore::SchedulerStats after = s.stats();
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  double sum = 0;
  for (double t : times) sum += t;
  const auto n = static_cast<double>(times.size());
  const auto ratio = [](int64_t part, int64_t whole) {
    return whole > 0 ? static_cast<double>(part) / static_cast<double>(whole) : 0.0;
  };
  return {target_running,
          sum / n,
          sorted[sorted.size() / 2],
          sorted[sorted.size() * 99 / 100],
          cpu / n,
          reqs / n,
          tokens / n,
          after.num_preemptions - before.num_preemptions,
          ratio(after.kv.prefix_hits - before.kv.prefix_hits,
                after.kv.prefix_queries - before.kv.prefix_queries),
          ratio(after.encoder.num_hits - before.encoder.num_hits,
                after.encoder.num_queries - before.encoder.num_queries)};
}

void print_json(const Workload& w, const std::vector<Result>& results) {
  std::printf(
      "{\"benchmark\": \"scheduler\", \"workload\": {\"steps\": %lld, \"warmup\": %lld, "
      "\"prompt_len\": %lld, \"image_len\": %lld, \"num_images\": %lld, \"output_len\": %lld, "
      "\"hit_rate\": %g, \"block_size\": %lld, \"max_batched_tokens\": %lld, \"seed\": %lld, "
      "\"prefix_caching\": %s, \"decode_only\": %s}, \"results\": [",
      static_cast<long long>(w.steps), static_cast<long long>(w.warmup),
      static_cast<long long>(w.prompt_len), static_cast<long long>(w.image_len),
      static_cast<long long>(w.num_images), static_cast<long long>(w.output_len), w.hit_rate,
      static_cast<long long>(w.block_size), static_cast<long long>(w.max_batched_tokens),
      static_cast<long long>(w.seed), w.prefix_caching ? "true" : "false",
      w.decode_only ? "true" : "false");
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    std::printf(
        "%s{\"running\": %lld, \"reqs_per_step\": %.1f, \"tokens_per_step\": %.1f, "
        "\"mean_us_per_step\": %.2f, \"p50_us\": %.2f, \"p99_us\": %.2f, "
        "\"thread_cpu_us_per_step\": %.2f, \"preemptions\": %lld, \"prefix_hit_rate\": %.4f, "
        "\"encoder_hit_rate\": %.4f}",
        i == 0 ? "" : ", ", static_cast<long long>(r.target_running), r.reqs, r.tokens, r.mean_us,
        r.p50_us, r.p99_us, r.cpu_us, static_cast<long long>(r.preemptions), r.prefix_hit_rate,
        r.encoder_hit_rate);
  }
  std::printf("]}\n");
}

void print_table(const Workload& w, const std::vector<Result>& results) {
  std::printf("scheduler steady state%s: %lld measured steps after %lld warm-up steps%s\n",
              w.decode_only ? " (decode only)" : "", static_cast<long long>(w.steps),
              static_cast<long long>(w.warmup), w.prefix_caching ? "" : ", no prefix caching");
  std::printf(
      "| target running | reqs/step | tokens/step | wall mean us | wall p50 us | wall p99 us | "
      "thread CPU us/step | preemptions | prefix hits | encoder hits |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Result& r : results) {
    std::printf("| %lld | %.0f | %.0f | %.1f | %.1f | %.1f | %.1f | %lld | %.0f%% | %.0f%% |\n",
                static_cast<long long>(r.target_running), r.reqs, r.tokens, r.mean_us, r.p50_us,
                r.p99_us, r.cpu_us, static_cast<long long>(r.preemptions), 100 * r.prefix_hit_rate,
                100 * r.encoder_hit_rate);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Workload w;
  mmcore::bench::BenchArgs args(
      "mmcore-bench-scheduler",
      "Time schedule() + update_from_output() per step with about N running requests.");
  args.add_int_list("running", &w.running, "running requests (max_num_seqs), one run each");
  args.add_int("steps", &w.steps, "measured steps per run");
  args.add_int("warmup", &w.warmup, "warm-up steps before measuring");
  args.add_int("prompt-len", &w.prompt_len, "text tokens per prompt");
  args.add_int("image-len", &w.image_len, "image tokens (= embeddings) per prompt; 0: none");
  args.add_int("num-images", &w.num_images, "distinct image identifiers (encoder-cache reuse)");
  args.add_int("output-len", &w.output_len, "mean generated tokens per request");
  args.add_double("hit-rate", &w.hit_rate, "fraction of requests repeating an earlier prompt");
  args.add_int("block-size", &w.block_size, "KV block size in tokens");
  args.add_int("max-batched-tokens", &w.max_batched_tokens, "token budget per step");
  args.add_int("seed", &w.seed, "random seed of the workload");
  args.add_int("sliding-groups", &w.sliding_groups,
               "KV cache groups with a sliding window besides the full one (5: Gemma 3); 0: one "
               "group");
  args.add_int("sliding-window", &w.sliding_window, "their window in tokens");
  bool no_prefix_caching = false;
  args.add_flag("no-prefix-caching", &no_prefix_caching, "disable the prefix cache");
  args.add_flag("decode-only", &w.decode_only,
                "no arrivals or finishes: measure pure decode steps after the warm-up prefills");
  args.add_flag("json", &w.json, "print one JSON object instead of a table");
  args.parse(argc, argv);
  w.prefix_caching = !no_prefix_caching;
  for (int64_t n : w.running) args.require(n >= 1 && n <= 65536, "--running values: 1..65536");
  args.require(w.steps >= 1, "--steps must be >= 1");
  args.require(w.warmup >= 0, "--warmup must be >= 0");
  args.require(w.prompt_len >= 1, "--prompt-len must be >= 1");
  args.require(w.image_len >= 0 && w.image_len <= 65536, "--image-len must be in 0..65536");
  args.require(w.num_images >= 1, "--num-images must be >= 1");
  args.require(w.output_len >= 2 && w.output_len <= 65536, "--output-len must be in 2..65536");
  args.require(w.hit_rate >= 0 && w.hit_rate <= 1, "--hit-rate must be in [0, 1]");
  args.require(w.block_size >= 1 && w.block_size <= 1024, "--block-size must be in 1..1024");
  args.require(w.sliding_groups >= 0 && w.sliding_groups <= 64, "--sliding-groups: 0..64");
  args.require(w.sliding_window >= 1, "--sliding-window must be >= 1");
  args.require(w.max_batched_tokens >= 1 && w.max_batched_tokens <= (1 << 24),
               "--max-batched-tokens must be in 1..16777216");
  std::vector<Result> results;
  for (int64_t n : w.running) results.push_back(run(w, n));
  if (w.json) {
    print_json(w, results);
  } else {
    print_table(w, results);
  }
  return 0;
}
