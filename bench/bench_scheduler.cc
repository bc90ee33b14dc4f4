// Scheduler steady-state benchmark: schedule() + update_from_output() per step with about N
// running requests (N = 256, 1,024). Prompts hold one image (shared among 64 identifiers, so
// the encoder cache hits), arrivals are Poisson with the rate that keeps ~N requests running.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "engine/scheduler.h"

namespace {

using Clock = std::chrono::steady_clock;
using mmcore::Request;
using mmcore::Scheduler;

constexpr int kPromptText = 96;   // text tokens around the image
constexpr int kImageLen = 160;    // image placeholder tokens (= embeddings)
constexpr int kMeanOutput = 128;  // generated tokens per request (uniform 64..192)
constexpr int kNumImages = 64;
constexpr int kWarmupSteps = 400;
constexpr int kMeasuredSteps = 2000;

Request make_request(mmcore::RequestId id, std::mt19937& rng) {
  Request r;
  r.id = id;
  const int before = static_cast<int>(rng() % kPromptText);
  r.token_ids.resize(kPromptText + kImageLen);
  for (auto& t : r.token_ids) t = static_cast<mmcore::TokenId>(rng() % 32000);
  mmcore::MMFeature f;
  f.identifier = "image-" + std::to_string(rng() % kNumImages);
  f.offset = before;
  f.length = kImageLen;
  f.num_embeds = kImageLen;
  r.features.push_back(f);
  r.sampling.max_tokens = kMeanOutput / 2 + static_cast<int>(rng() % kMeanOutput);
  r.sampling.ignore_eos = true;
  return r;
}

struct Result {
  double mean_us, p50_us, p99_us, cpu_us, running, tokens;
};

// CPU time of this thread: excludes time the OS gave to other processes on a shared machine.
double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

Result run(int target_running) {
  mmcore::SchedulerConfig c;
  c.block_size = 16;
  c.max_num_seqs = target_running;
  c.max_num_batched_tokens = 8192;
  c.max_model_len = 4096;
  c.num_blocks = target_running * (kPromptText + kImageLen + 2 * kMeanOutput) / 16 * 5 / 4;
  c.encoder_budget = 8192;
  c.encoder_cache_size = 64 * kImageLen * 2;
  Scheduler s(c);
  std::mt19937 rng(1);
  // Poisson arrivals at the rate that replaces finishing requests.
  std::poisson_distribution<int> arrivals(static_cast<double>(target_running) / kMeanOutput);
  mmcore::RequestId next_id = 0;
  for (int i = 0; i < target_running; ++i) s.add_request(make_request(next_id++, rng));
  std::vector<mmcore::TokenId> sampled;
  std::vector<double> times;
  double running = 0, tokens = 0, cpu = 0;
  for (int step = 0; step < kWarmupSteps + kMeasuredSteps; ++step) {
    const int n = arrivals(rng);
    for (int i = 0; i < n; ++i) s.add_request(make_request(next_id++, rng));
    const double c0 = thread_cpu_us();
    const auto t0 = Clock::now();
    const mmcore::SchedulerOutput& out = s.schedule();
    sampled.assign(out.sampling_req_ids.size(), 7);
    (void)s.update_from_output(out, sampled);
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    const double cpu_us = thread_cpu_us() - c0;
    if (step >= kWarmupSteps) {
      times.push_back(us);
      cpu += cpu_us;
      running += out.num_reqs();
      tokens += out.num_tokens();
    }
  }
  s.check_invariants();
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  double sum = 0;
  for (double t : times) sum += t;
  const auto n = static_cast<double>(times.size());
  return {
      sum / n,   sorted[sorted.size() / 2], sorted[sorted.size() * 99 / 100], cpu / n, running / n,
      tokens / n};
}

}  // namespace

int main() {
  std::printf("scheduler steady state: %d measured steps after %d warm-up steps\n", kMeasuredSteps,
              kWarmupSteps);
  std::printf(
      "| target running | reqs/step | tokens/step | wall mean us | wall p50 us | wall p99 us | "
      "thread CPU us/step |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int n : {256, 1024}) {
    const Result r = run(n);
    std::printf("| %d | %.0f | %.0f | %.1f | %.1f | %.1f | %.1f |\n", n, r.running, r.tokens,
                r.mean_us, r.p50_us, r.p99_us, r.cpu_us);
  }
  return 0;
}
