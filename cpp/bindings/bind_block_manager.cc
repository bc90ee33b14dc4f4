// _core.BlockManager: the KV block manager over lightweight requests built from numpy token ids,
// for tests and tools. The scheduler owns its own block manager; this one is standalone.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "bindings/bindings.h"
#include "engine/block_manager.h"

namespace py = pybind11;

namespace mmcore::bindings {

namespace {

using ItemTuple = std::tuple<std::string, int32_t, int32_t>;  // identifier, offset, length

py::array_t<int32_t> to_numpy(const std::vector<int32_t>& values) {
  py::array_t<int32_t> out(static_cast<py::ssize_t>(values.size()));
  std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

std::vector<TokenId> to_tokens(
    const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& a) {
  if (a.ndim() != 1) throw std::invalid_argument("token_ids must be a 1-D array");
  return std::vector<TokenId>(a.data(), a.data() + a.size());
}

// Owns the requests the standalone block manager sees; numbers computed tokens itself.
class BlockManagerHarness {
 public:
  BlockManagerHarness(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching)
      : manager_(BlockManagerConfig{num_blocks, block_size, enable_prefix_caching, {}}) {}

  void add_request(RequestId id,
                   const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& tokens,
                   const std::vector<ItemTuple>& items, const std::string& cache_salt) {
    if (requests_.count(id) != 0) {
      throw std::invalid_argument("request " + std::to_string(id) + " already exists");
    }
    Request r;
    r.id = id;
    r.token_ids = to_tokens(tokens);
    if (r.token_ids.empty()) throw std::invalid_argument("token_ids must not be empty");
    r.num_prompt_tokens = r.num_tokens();
    r.cache_salt = cache_salt;
    int32_t prev_end = 0;
    for (const auto& [identifier, offset, length] : items) {
      if (offset < prev_end || length <= 0 || offset + length > r.num_tokens()) {
        throw std::invalid_argument("item '" + identifier +
                                    "' must be sorted, non-overlapping and inside the tokens");
      }
      MMFeature f;
      f.identifier = identifier;
      f.offset = offset;
      f.length = length;
      f.num_embeds = length;
      r.features.push_back(std::move(f));
      prev_end = offset + length;
    }
    requests_.emplace(id, std::move(r));
  }

  void append_tokens(
      RequestId id, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& tokens) {
    Request& r = get(id);
    std::vector<TokenId> more = to_tokens(tokens);
    r.token_ids.insert(r.token_ids.end(), more.begin(), more.end());
  }

  py::array_t<int32_t> get_computed_blocks(RequestId id) {
    return to_numpy(manager_.get_computed_blocks(get(id)).blocks);
  }

  bool can_allocate(RequestId id, int32_t num_new_tokens, bool use_prefix_cache) {
    Request& r = get(id);
    ComputedBlocks hit = use_prefix_cache ? manager_.get_computed_blocks(r) : ComputedBlocks{};
    return manager_.can_allocate(r, num_new_tokens, hit);
  }

  std::optional<int32_t> allocate(RequestId id, int32_t num_new_tokens, bool use_prefix_cache) {
    if (num_new_tokens < 0) throw std::invalid_argument("num_new_tokens must be >= 0");
    Request& r = get(id);
    ComputedBlocks hit = use_prefix_cache ? manager_.get_computed_blocks(r) : ComputedBlocks{};
    if (!manager_.allocate_slots(r, num_new_tokens, hit)) return std::nullopt;
    r.num_computed_tokens += hit.num_tokens + num_new_tokens;
    manager_.cache_full_blocks(r, r.num_computed_tokens);
    return hit.num_tokens;
  }

  void free(RequestId id) {
    Request& r = get(id);
    manager_.free(r);
    r.num_computed_tokens = 0;
  }

  void remove_request(RequestId id) {
    free(id);
    requests_.erase(id);
  }

  py::dict stats() const {
    BlockManagerStats s = manager_.stats();
    py::dict d;
    d["num_blocks"] = s.num_blocks;
    d["kv_blocks_used"] = s.num_used_blocks;
    d["kv_blocks_free"] = s.num_free_blocks;
    d["kv_blocks_cached"] = s.num_cached_blocks;
    d["prefix_queries"] = s.prefix_queries;
    d["prefix_hits"] = s.prefix_hits;
    return d;
  }

  Request& get(RequestId id) {
    auto it = requests_.find(id);
    if (it == requests_.end()) {
      throw std::invalid_argument("unknown request " + std::to_string(id));
    }
    return it->second;
  }

  BlockManager manager_;
  std::unordered_map<RequestId, Request> requests_;
};

}  // namespace

void bind_block_manager(py::module_& m) {
  py::class_<BlockManagerHarness>(m, "BlockManager",
                                  "KV block manager with prefix caching over standalone requests.")
      .def(py::init<int32_t, int32_t, bool>(), py::arg("num_blocks"), py::arg("block_size") = 16,
           py::arg("enable_prefix_caching") = true)
      .def("add_request", &BlockManagerHarness::add_request, py::arg("request_id"),
           py::arg("token_ids"), py::arg("items") = std::vector<ItemTuple>{},
           py::arg("cache_salt") = "",
           "Registers a request; items are (identifier, offset, length) multimodal ranges.")
      .def("append_tokens", &BlockManagerHarness::append_tokens, py::arg("request_id"),
           py::arg("token_ids"))
      .def("get_computed_blocks", &BlockManagerHarness::get_computed_blocks, py::arg("request_id"),
           "Block ids of the longest cached prefix (never the last token); empty when the "
           "request holds blocks.")
      .def("can_allocate", &BlockManagerHarness::can_allocate, py::arg("request_id"),
           py::arg("num_new_tokens"), py::arg("use_prefix_cache") = true)
      .def("allocate", &BlockManagerHarness::allocate, py::arg("request_id"),
           py::arg("num_new_tokens"), py::arg("use_prefix_cache") = true,
           "Takes the prefix hit (first allocation only) plus num_new_tokens slots, marks them "
           "computed and caches full blocks. Returns the hit length in tokens, or None when "
           "the blocks do not fit (nothing changes).")
      .def("free", &BlockManagerHarness::free, py::arg("request_id"),
           "Releases the request's blocks; it keeps its tokens and may allocate again.")
      .def("remove_request", &BlockManagerHarness::remove_request, py::arg("request_id"))
      .def(
          "block_table",
          [](BlockManagerHarness& h, RequestId id) {
            return to_numpy(h.manager_.block_table(h.get(id)));
          },
          py::arg("request_id"))
      .def(
          "num_computed_tokens",
          [](BlockManagerHarness& h, RequestId id) { return h.get(id).num_computed_tokens; },
          py::arg("request_id"))
      .def("num_free_blocks",
           [](const BlockManagerHarness& h) { return h.manager_.num_free_blocks(); })
      .def("stats", &BlockManagerHarness::stats)
      .def(
          "check_invariants", [](const BlockManagerHarness& h) { h.manager_.check_invariants(); },
          "Raises RuntimeError naming the first broken invariant.");
}

}  // namespace mmcore::bindings
