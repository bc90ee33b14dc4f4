// _core.SchedulerConfig / Scheduler / SchedulerOutput / UpdateResult. Each step's vectors are
// copied once into numpy arrays (no per-request Python objects cross the boundary).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings/bindings.h"
#include "bindings/numpy_convert.h"
#include "engine/scheduler.h"
#include "engine/stop_conditions.h"

namespace py = pybind11;

namespace mmcore::bindings {

namespace {

template <typename T>
py::array_t<T> copy_array(const std::vector<T>& values) {
  py::array_t<T> out(static_cast<py::ssize_t>(values.size()));
  if (!values.empty()) std::memcpy(out.mutable_data(), values.data(), values.size() * sizeof(T));
  return out;
}

// The Python view of one step: every SchedulerOutput vector as a numpy array of the same name.
struct PySchedulerOutput {
  int64_t step_id = 0;
  int32_t num_reqs = 0;
  int32_t num_tokens = 0;
  int32_t max_blocks_per_req = 0;
  int32_t position_dims = 1;
  int32_t max_cross_blocks_per_req = 0;
  int32_t num_kv_groups = 1;
  py::array_t<int64_t> req_ids, positions, slot_mapping, sampling_req_ids, encoder_req_ids,
      encoder_handles, scatter_handles, freed_encoder_handles, finished_req_ids, preempted_req_ids,
      cross_fill_handles, cross_slot_mapping, group_slot_mapping;
  py::array_t<int32_t> num_scheduled_tokens, num_computed_tokens, seq_lens, query_start_loc,
      block_tables, input_ids, logits_indices, prev_sample_index, encoder_item_indices,
      scatter_src_offsets, scatter_dst_rows, scatter_lens, cross_seq_lens, cross_block_tables,
      cross_fill_rows, group_block_tables;

  explicit PySchedulerOutput(const SchedulerOutput& o)
      : step_id(o.step_id),
        num_reqs(o.num_reqs()),
        num_tokens(o.num_tokens()),
        max_blocks_per_req(o.max_blocks_per_req),
        position_dims(o.position_dims),
        max_cross_blocks_per_req(o.max_cross_blocks_per_req),
        num_kv_groups(o.num_kv_groups),
        req_ids(copy_array(o.req_ids)),
        positions(copy_array(o.positions)),
        slot_mapping(copy_array(o.slot_mapping)),
        sampling_req_ids(copy_array(o.sampling_req_ids)),
        encoder_req_ids(copy_array(o.encoder_req_ids)),
        encoder_handles(copy_array(o.encoder_handles)),
        scatter_handles(copy_array(o.scatter_handles)),
        freed_encoder_handles(copy_array(o.freed_encoder_handles)),
        finished_req_ids(copy_array(o.finished_req_ids)),
        preempted_req_ids(copy_array(o.preempted_req_ids)),
        cross_fill_handles(copy_array(o.cross_fill_handles)),
        cross_slot_mapping(copy_array(o.cross_slot_mapping)),
        group_slot_mapping(copy_array(o.group_slot_mapping)),
        num_scheduled_tokens(copy_array(o.num_scheduled_tokens)),
        num_computed_tokens(copy_array(o.num_computed_tokens)),
        seq_lens(copy_array(o.seq_lens)),
        query_start_loc(copy_array(o.query_start_loc)),
        block_tables(copy_array(o.block_tables)),
        input_ids(copy_array(o.input_ids)),
        logits_indices(copy_array(o.logits_indices)),
        prev_sample_index(copy_array(o.prev_sample_index)),
        encoder_item_indices(copy_array(o.encoder_item_indices)),
        scatter_src_offsets(copy_array(o.scatter_src_offsets)),
        scatter_dst_rows(copy_array(o.scatter_dst_rows)),
        scatter_lens(copy_array(o.scatter_lens)),
        cross_seq_lens(copy_array(o.cross_seq_lens)),
        cross_block_tables(copy_array(o.cross_block_tables)),
        cross_fill_rows(copy_array(o.cross_fill_rows)),
        group_block_tables(copy_array(o.group_block_tables)) {
    block_tables.resize(
        {static_cast<py::ssize_t>(num_reqs), static_cast<py::ssize_t>(max_blocks_per_req)});
    if (!o.cross_seq_lens.empty()) {
      cross_block_tables.resize(
          {static_cast<py::ssize_t>(num_reqs), static_cast<py::ssize_t>(max_cross_blocks_per_req)});
    }
    if (num_kv_groups > 1) {
      const auto extra = static_cast<py::ssize_t>(num_kv_groups - 1);
      group_block_tables.resize({extra * static_cast<py::ssize_t>(num_reqs),
                                 static_cast<py::ssize_t>(max_blocks_per_req)});
      group_slot_mapping.resize({extra, static_cast<py::ssize_t>(num_tokens)});
    }
    if (position_dims == 3) {
      positions.resize({py::ssize_t{3}, static_cast<py::ssize_t>(num_tokens)});
    }
  }
};

struct PyUpdateResult {
  py::array_t<int64_t> req_ids;
  py::array_t<int32_t> token_ids;
  py::array_t<int64_t> finished_req_ids;
  std::vector<std::string> finish_reasons;
};

// Reads a multimodal item from any object with the MMFeature attributes (_core.MMFeature).
MMFeature feature_from_py(const py::handle& obj) {
  MMFeature f;
  f.modality = obj.attr("modality").cast<Modality>();
  f.identifier = obj.attr("identifier").cast<std::string>();
  f.offset = obj.attr("offset").cast<int32_t>();
  f.length = obj.attr("length").cast<int32_t>();
  f.num_embeds = obj.attr("num_embeds").cast<int32_t>();
  if (py::hasattr(obj, "embed_mask")) {
    py::object mask = obj.attr("embed_mask");
    if (!mask.is_none()) {
      auto arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(mask);
      if (!arr) throw std::invalid_argument("embed_mask must be convertible to a uint8 array");
      f.embed_mask.assign(arr.data(), arr.data() + arr.size());
    }
  }
  return f;
}

RequestStatus status_from_reason(const std::string& reason) {
  if (reason == "abort") return RequestStatus::kFinishedAborted;
  if (reason == "stop") return RequestStatus::kFinishedStopped;
  if (reason == "length") return RequestStatus::kFinishedLength;
  throw std::invalid_argument("finish reason must be 'abort', 'stop' or 'length', got '" + reason +
                              "'");
}

void add_request(Scheduler& s, RequestId request_id, const py::object& token_ids,
                 const py::list& features, const py::object& max_tokens,
                 const py::object& min_tokens, const py::object& eos_token_ids,
                 const py::object& stop_token_ids, bool ignore_eos, const py::object& priority,
                 std::string cache_salt, const py::object& mrope_positions, int64_t mrope_delta,
                 const py::object& encoder_input) {
  // Every user-derived number is checked here: a bad one is a ValueError, never a TypeError.
  Request r;
  r.id = request_id;
  r.token_ids = to_int32_vector(token_ids, "token_ids");
  for (const py::handle& f : features) r.features.push_back(feature_from_py(f));
  r.sampling.max_tokens = to_int32_scalar(max_tokens, "max_tokens");
  r.sampling.min_tokens = to_int32_scalar(min_tokens, "min_tokens");
  r.sampling.eos_token_ids = to_int32_vector(eos_token_ids, "eos_token_ids");
  r.sampling.stop_token_ids = to_int32_vector(stop_token_ids, "stop_token_ids");
  r.sampling.ignore_eos = ignore_eos;
  r.priority = to_int32_scalar(priority, "priority");
  r.cache_salt = std::move(cache_salt);
  if (!mrope_positions.is_none()) {
    auto pos =
        py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(mrope_positions);
    if (!pos || pos.ndim() != 2 || pos.shape(0) != 3) {
      throw std::invalid_argument("mrope_positions must be an int64 array of shape (3, n)");
    }
    r.mrope_positions.assign(pos.data(), pos.data() + pos.size());
  }
  r.mrope_delta = mrope_delta;
  if (!encoder_input.is_none()) {
    r.encoder_input = feature_from_py(encoder_input);
    if (r.encoder_input.num_embeds <= 0) {
      throw std::invalid_argument("encoder_input must have num_embeds > 0");
    }
  }
  s.add_request(std::move(r));
}

PyUpdateResult update(
    Scheduler& s, const PySchedulerOutput& out,
    const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& sampled) {
  if (sampled.ndim() != 1) throw std::invalid_argument("sampled_token_ids must be a 1-D array");
  UpdateResult r =
      s.update_from_output(out.step_id, sampled.data(), static_cast<int32_t>(sampled.size()));
  PyUpdateResult py_result;
  py_result.req_ids = copy_array(r.req_ids);
  py_result.token_ids = copy_array(r.token_ids);
  py_result.finished_req_ids = copy_array(r.finished_req_ids);
  for (RequestStatus status : r.finish_statuses) {
    py_result.finish_reasons.emplace_back(finish_reason_name(status));
  }
  return py_result;
}

py::dict stats_dict(const Scheduler& s) {
  const SchedulerStats st = s.stats();
  py::dict d;
  d["kv_blocks_used"] = st.kv.num_used_blocks;
  d["kv_blocks_free"] = st.kv.num_free_blocks;
  d["kv_blocks_cached"] = st.kv.num_cached_blocks;
  d["prefix_queries"] = st.kv.prefix_queries;
  d["prefix_hits"] = st.kv.prefix_hits;
  d["num_kv_groups"] = st.kv.num_kv_groups;
  d["num_sliding_blocks_freed"] = st.kv.num_sliding_blocks_freed;
  d["encoder_queries"] = st.encoder.num_queries;
  d["encoder_hits"] = st.encoder.num_hits;
  d["encoder_used_embeds"] = st.encoder.used_embeds;
  d["encoder_entries"] = st.encoder.num_entries;
  d["encoder_referenced_entries"] = st.encoder.num_referenced_entries;
  d["num_preemptions"] = st.num_preemptions;
  d["num_steps"] = st.num_steps;
  d["num_running"] = st.num_running;
  d["num_waiting"] = st.num_waiting;
  return d;
}

}  // namespace

void bind_scheduler(py::module_& m) {
  py::class_<SchedulerConfig>(m, "SchedulerConfig", "Limits of one scheduler (all settable).")
      .def(py::init<>())
      .def_readwrite("num_blocks", &SchedulerConfig::num_blocks)
      .def_readwrite("block_size", &SchedulerConfig::block_size)
      .def_readwrite("max_num_batched_tokens", &SchedulerConfig::max_num_batched_tokens)
      .def_readwrite("max_num_seqs", &SchedulerConfig::max_num_seqs)
      .def_readwrite("max_model_len", &SchedulerConfig::max_model_len)
      .def_readwrite("enable_prefix_caching", &SchedulerConfig::enable_prefix_caching)
      .def_readwrite("enable_chunked_prefill", &SchedulerConfig::enable_chunked_prefill)
      .def_readwrite("chunk_inside_mm_items", &SchedulerConfig::chunk_inside_mm_items)
      .def_readwrite("encoder_budget", &SchedulerConfig::encoder_budget)
      .def_readwrite("encoder_cache_size", &SchedulerConfig::encoder_cache_size)
      .def_readwrite("kv_group_windows", &SchedulerConfig::kv_group_windows,
                     "KV cache groups: -1 (full) or the sliding window per group, full first; "
                     "empty for one full group");

  py::class_<PySchedulerOutput> output(
      m, "SchedulerOutput", "One step as numpy arrays (see cpp/engine/scheduler_output.h).");
  output.def_readonly("step_id", &PySchedulerOutput::step_id)
      .def_readonly("num_reqs", &PySchedulerOutput::num_reqs)
      .def_readonly("num_tokens", &PySchedulerOutput::num_tokens)
      .def_readonly("max_blocks_per_req", &PySchedulerOutput::max_blocks_per_req)
      .def_readonly("position_dims", &PySchedulerOutput::position_dims)
      .def_readonly("num_kv_groups", &PySchedulerOutput::num_kv_groups);
  output.def_readonly("group_block_tables", &PySchedulerOutput::group_block_tables);
  output.def_readonly("group_slot_mapping", &PySchedulerOutput::group_slot_mapping);
  output.def_readonly("req_ids", &PySchedulerOutput::req_ids);
  output.def_readonly("num_scheduled_tokens", &PySchedulerOutput::num_scheduled_tokens);
  output.def_readonly("num_computed_tokens", &PySchedulerOutput::num_computed_tokens);
  output.def_readonly("seq_lens", &PySchedulerOutput::seq_lens);
  output.def_readonly("query_start_loc", &PySchedulerOutput::query_start_loc);
  output.def_readonly("block_tables", &PySchedulerOutput::block_tables);
  output.def_readonly("input_ids", &PySchedulerOutput::input_ids);
  output.def_readonly("positions", &PySchedulerOutput::positions);
  output.def_readonly("slot_mapping", &PySchedulerOutput::slot_mapping);
  output.def_readonly("logits_indices", &PySchedulerOutput::logits_indices);
  output.def_readonly("sampling_req_ids", &PySchedulerOutput::sampling_req_ids);
  output.def_readonly("prev_sample_index", &PySchedulerOutput::prev_sample_index);
  output.def_readonly("encoder_req_ids", &PySchedulerOutput::encoder_req_ids);
  output.def_readonly("encoder_item_indices", &PySchedulerOutput::encoder_item_indices);
  output.def_readonly("encoder_handles", &PySchedulerOutput::encoder_handles);
  output.def_readonly("scatter_handles", &PySchedulerOutput::scatter_handles);
  output.def_readonly("scatter_src_offsets", &PySchedulerOutput::scatter_src_offsets);
  output.def_readonly("scatter_dst_rows", &PySchedulerOutput::scatter_dst_rows);
  output.def_readonly("scatter_lens", &PySchedulerOutput::scatter_lens);
  output.def_readonly("freed_encoder_handles", &PySchedulerOutput::freed_encoder_handles);
  output.def_readonly("finished_req_ids", &PySchedulerOutput::finished_req_ids);
  output.def_readonly("preempted_req_ids", &PySchedulerOutput::preempted_req_ids);
  output.def_readonly("cross_seq_lens", &PySchedulerOutput::cross_seq_lens);
  output.def_readonly("cross_block_tables", &PySchedulerOutput::cross_block_tables);
  output.def_readonly("max_cross_blocks_per_req", &PySchedulerOutput::max_cross_blocks_per_req);
  output.def_readonly("cross_fill_rows", &PySchedulerOutput::cross_fill_rows);
  output.def_readonly("cross_fill_handles", &PySchedulerOutput::cross_fill_handles);
  output.def_readonly("cross_slot_mapping", &PySchedulerOutput::cross_slot_mapping);

  py::class_<PyUpdateResult>(m, "UpdateResult")
      .def_readonly("req_ids", &PyUpdateResult::req_ids)
      .def_readonly("token_ids", &PyUpdateResult::token_ids)
      .def_readonly("finished_req_ids", &PyUpdateResult::finished_req_ids)
      .def_readonly("finish_reasons", &PyUpdateResult::finish_reasons);

  py::class_<Scheduler>(m, "Scheduler",
                        "Step scheduler over the KV block manager and encoder cache.")
      .def(py::init<const SchedulerConfig&>(), py::arg("config"))
      .def("add_request", &add_request, py::arg("request_id"), py::arg("token_ids"),
           py::arg("features"), py::arg("max_tokens"), py::arg("min_tokens") = 0,
           py::arg("eos_token_ids") = py::list(), py::arg("stop_token_ids") = py::list(),
           py::arg("ignore_eos") = false, py::arg("priority") = 0, py::arg("cache_salt") = "",
           py::arg("mrope_positions") = py::none(), py::arg("mrope_delta") = 0,
           py::arg("encoder_input") = py::none())
      .def("schedule", [](Scheduler& s) { return PySchedulerOutput(s.schedule()); })
      .def("update_from_output", &update, py::arg("out"), py::arg("sampled_token_ids"))
      .def(
          "finish_request",
          [](Scheduler& s, RequestId id, const std::string& reason) {
            s.finish_request(id, status_from_reason(reason));
          },
          py::arg("request_id"), py::arg("reason") = "abort")
      .def("set_max_num_seqs", &Scheduler::set_max_num_seqs, py::arg("max_num_seqs"))
      .def_property_readonly("max_num_seqs",
                             [](const Scheduler& s) { return s.config().max_num_seqs; })
      .def("has_unfinished_requests", &Scheduler::has_unfinished_requests)
      .def_property_readonly("num_waiting", &Scheduler::num_waiting)
      .def_property_readonly("num_running", &Scheduler::num_running)
      .def("stats", &stats_dict)
      .def("check_invariants", &Scheduler::check_invariants,
           "Raises RuntimeError naming the first broken invariant.");
}

}  // namespace mmcore::bindings
