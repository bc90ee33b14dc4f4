// _core.EncoderCacheManager: the scheduler-side view of cached encoder outputs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "engine/encoder_cache.h"

namespace py = pybind11;

namespace mmcore::bindings {

void bind_encoder_cache(py::module_& m) {
  py::class_<EncoderCacheStats>(m, "EncoderCacheStats")
      .def_readonly("num_queries", &EncoderCacheStats::num_queries)
      .def_readonly("num_hits", &EncoderCacheStats::num_hits)
      .def_readonly("used_embeds", &EncoderCacheStats::used_embeds)
      .def_readonly("capacity_embeds", &EncoderCacheStats::capacity_embeds)
      .def_readonly("num_entries", &EncoderCacheStats::num_entries)
      .def_readonly("num_referenced_entries", &EncoderCacheStats::num_referenced_entries)
      .def("__repr__", [](const EncoderCacheStats& s) {
        return "EncoderCacheStats(num_queries=" + std::to_string(s.num_queries) +
               ", num_hits=" + std::to_string(s.num_hits) +
               ", used_embeds=" + std::to_string(s.used_embeds) +
               ", capacity_embeds=" + std::to_string(s.capacity_embeds) +
               ", num_entries=" + std::to_string(s.num_entries) +
               ", num_referenced_entries=" + std::to_string(s.num_referenced_entries) + ")";
      });

  py::class_<EncoderCacheManager>(m, "EncoderCacheManager",
                                  "Which encoder outputs are cached, keyed by item identifier; "
                                  "space counted in embeddings.")
      .def(py::init<int64_t>(), py::arg("capacity_embeds"))
      .def("lookup", &EncoderCacheManager::lookup, py::arg("identifier"))
      .def("contains", &EncoderCacheManager::contains, py::arg("identifier"))
      .def("__contains__", &EncoderCacheManager::contains, py::arg("identifier"))
      .def("handle", &EncoderCacheManager::handle, py::arg("identifier"))
      .def("num_embeds", &EncoderCacheManager::num_embeds, py::arg("identifier"))
      .def("num_refs", &EncoderCacheManager::num_refs, py::arg("identifier"))
      .def("can_allocate", &EncoderCacheManager::can_allocate, py::arg("num_embeds"))
      .def("allocate", &EncoderCacheManager::allocate, py::arg("identifier"), py::arg("num_embeds"),
           py::arg("request"))
      .def("acquire", &EncoderCacheManager::acquire, py::arg("identifier"), py::arg("request"))
      .def("release", &EncoderCacheManager::release, py::arg("identifier"), py::arg("request"))
      .def("release_all", &EncoderCacheManager::release_all, py::arg("request"))
      .def("take_freed", &EncoderCacheManager::take_freed)
      .def_property_readonly("capacity_embeds", &EncoderCacheManager::capacity_embeds)
      .def_property_readonly("used_embeds", &EncoderCacheManager::used_embeds)
      .def_property_readonly("free_embeds", &EncoderCacheManager::free_embeds)
      .def_property_readonly("evictable_embeds", &EncoderCacheManager::evictable_embeds)
      .def("stats", &EncoderCacheManager::stats)
      .def("check_invariants", &EncoderCacheManager::check_invariants);
}

}  // namespace mmcore::bindings
