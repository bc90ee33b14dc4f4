// cpp_server_loop: how a C++ server embeds the mmcore core (see docs/cpp_embedding.md).
//
//   admit:  prompt with one <image> per item  -> expand_placeholders -> Scheduler::add_request
//   step:   schedule() -> run the (stand-in) model on the flat arrays -> update_from_output()
//   abort:  finish_request(id, kFinishedAborted) at any time between steps
//
// Requests arrive a few per step, carry 0-2 images (fake feature sizes, identifiers reused so the
// encoder and prefix caches hit), the KV cache is small enough that requests get preempted, one
// request in seven is aborted by its "client", one in twenty is malformed and refused with a
// message, and every step prints its stats.
// Usage: cpp_server_loop [num_requests] [--quiet]. Exits 1 if anything is left unfinished.
#include <mmcore/c_api.h>  // only for mmcore_version_string(): the library's version
#include <mmcore/placeholders.h>
#include <mmcore/scheduler.h>
#include <mmcore/version.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "stand_in_model.h"

namespace {

constexpr int32_t kImageToken = 32000;  // the "<image>" placeholder of our pretend model
constexpr int32_t kEosToken = 2;
constexpr int32_t kVocabSize = 32000;

struct ServerStats {
  int64_t admitted = 0, rejected = 0, finished = 0, aborted = 0, preempted = 0, tokens = 0;
};

// One incoming request: text with one placeholder per image, plus each image's feature size as
// the processor computed it.
mmcore::Request make_request(mmcore::RequestId id, std::mt19937& rng) {
  std::vector<int32_t> prompt;
  std::vector<mmcore::PlaceholderItem> items;
  const int num_images = static_cast<int>(rng() % 3);
  for (int i = 0; i < num_images; ++i) {
    for (int t = 0; t < 8; ++t) prompt.push_back(100 + static_cast<int32_t>(rng() % 1000));
    prompt.push_back(kImageToken);
    mmcore::PlaceholderItem item;
    const int picture = static_cast<int>(rng() % 6);  // 6 distinct pictures in circulation
    item.identifier = "picture-" + std::to_string(picture);
    item.placeholder_token_id = kImageToken;
    item.num_embeds = 48 + 16 * picture;  // fake feature size, fixed per picture
    items.push_back(item);
  }
  for (int t = 0; t < 24; ++t) prompt.push_back(100 + static_cast<int32_t>(rng() % 1000));
  // A broken client: every 20th request has one <image> more than it sends images.
  if (id % 20 == 19) prompt.push_back(kImageToken);
  const std::vector<mmcore::PlaceholderToken> known = {
      {kImageToken, mmcore::Modality::kImage, "<image>"}};
  mmcore::ExpandedPrompt expanded =
      mmcore::expand_placeholders(prompt, items, {mmcore::Modality::kImage}, 1024, known);
  mmcore::Request r;
  r.id = id;
  r.token_ids = std::move(expanded.token_ids);
  r.features = std::move(expanded.features);
  r.sampling.max_tokens = 16 + static_cast<int32_t>(rng() % 48);
  r.sampling.eos_token_ids = {kEosToken};
  return r;
}

int serve(int num_requests, bool quiet) {
  std::printf("mmcore library %s, headers %s: serving %d requests\n", mmcore_version_string(),
              MMCORE_VERSION_STRING, num_requests);

  mmcore::SchedulerConfig config;
  config.num_blocks = 96;  // 1,536 slots: not enough for everyone, so preemption happens
  config.block_size = 16;
  config.max_num_seqs = 16;
  config.max_num_batched_tokens = 384;
  config.max_model_len = 1024;
  config.encoder_budget = 512;
  config.encoder_cache_size = 1024;
  mmcore::Scheduler scheduler(config);
  StandInModel model(kVocabSize, kEosToken);

  std::mt19937 rng(7);
  std::unordered_map<int64_t, int32_t> rows_by_handle;  // what the encoder will produce
  ServerStats stats;
  mmcore::RequestId next_id = 0;
  int64_t step = 0;
  if (!quiet) {
    std::printf(
        "step | reqs | tokens | encoded | preempted | finished | running | waiting | "
        "kv used\n");
  }
  while (next_id < num_requests || scheduler.has_unfinished_requests()) {
    // Admission: up to 3 new requests per step. A bad request is refused, the server goes on.
    for (int i = 0; i < 3 && next_id < num_requests; ++i) {
      try {
        scheduler.add_request(make_request(next_id, rng));
        ++stats.admitted;
      } catch (const std::invalid_argument& e) {
        std::printf("request %lld refused: %s\n", static_cast<long long>(next_id), e.what());
        ++stats.rejected;
      }
      ++next_id;
    }
    // A client disconnects: abort every 7th request once it has produced a few tokens.
    for (mmcore::RequestId id = 0; id < next_id; id += 7) {
      const mmcore::Request* r = scheduler.find_request(id);
      if (r != nullptr && r->num_output_tokens() >= 4) {
        scheduler.finish_request(id, mmcore::RequestStatus::kFinishedAborted);
        ++stats.aborted;
      }
    }

    const mmcore::SchedulerOutput& out = scheduler.schedule();
    // The encoder's output size for each item to encode (a real runner gets it from the tensor).
    for (size_t i = 0; i < out.encoder_handles.size(); ++i) {
      const mmcore::Request* r = scheduler.find_request(out.encoder_req_ids[i]);
      const mmcore::MMFeature& f = r->features[static_cast<size_t>(out.encoder_item_indices[i])];
      rows_by_handle[out.encoder_handles[i]] = f.num_embeds;
    }
    const std::vector<int32_t> sampled = model.execute(out, rows_by_handle);
    const mmcore::UpdateResult result = scheduler.update_from_output(out, sampled);
    stats.tokens += static_cast<int64_t>(result.token_ids.size());
    stats.preempted += static_cast<int64_t>(out.preempted_req_ids.size());
    stats.finished += static_cast<int64_t>(result.finished_req_ids.size());
    if (!quiet) {
      const mmcore::SchedulerStats s = scheduler.stats();
      std::printf("%4lld | %4d | %6d | %7zu | %9zu | %8zu | %7d | %7d | %3d/%d\n",
                  static_cast<long long>(step), out.num_reqs(), out.num_tokens(),
                  out.encoder_handles.size(), out.preempted_req_ids.size(),
                  result.finished_req_ids.size(), s.num_running, s.num_waiting,
                  s.kv.num_used_blocks, s.kv.num_blocks);
    }
    ++step;
    if (step > 100000) {
      std::fprintf(stderr, "no progress after %lld steps\n", static_cast<long long>(step));
      return 1;
    }
  }
  scheduler.check_invariants();
  const mmcore::SchedulerStats s = scheduler.stats();
  std::printf(
      "done in %lld steps: %lld admitted, %lld refused, %lld finished, %lld aborted, %lld "
      "preemptions, %lld tokens generated, %lld items encoded, encoder cache hits %lld/%lld, "
      "prefix cache hits %lld/%lld tokens, KV blocks in use %d\n",
      static_cast<long long>(step), static_cast<long long>(stats.admitted),
      static_cast<long long>(stats.rejected), static_cast<long long>(stats.finished),
      static_cast<long long>(stats.aborted), static_cast<long long>(s.num_preemptions),
      static_cast<long long>(stats.tokens), static_cast<long long>(model.num_encoded_items()),
      static_cast<long long>(s.encoder.num_hits), static_cast<long long>(s.encoder.num_queries),
      static_cast<long long>(s.kv.prefix_hits), static_cast<long long>(s.kv.prefix_queries),
      s.kv.num_used_blocks);
  const bool ok = stats.admitted == stats.finished + stats.aborted &&
                  stats.admitted + stats.rejected == num_requests && s.kv.num_used_blocks == 0 &&
                  (num_requests < 64 || (s.num_preemptions > 0 && stats.aborted > 0));
  std::printf("%s\n", ok ? "OK" : "FAILED: requests left, blocks leaked, or no preemption/abort");
  return ok ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  int num_requests = 64;
  bool quiet = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quiet") == 0) {
      quiet = true;
    } else {
      num_requests = std::atoi(argv[i]);
    }
  }
  try {
    return serve(num_requests, quiet);
  } catch (const std::exception& e) {  // a broken invariant: a bug in the core or in this loop
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
