#include <pybind11/pybind11.h>

#include "bindings/bindings.h"
#include "engine/types.h"

namespace py = pybind11;

namespace mmcore::bindings {

void bind_types(py::module_& m) {
  py::enum_<Modality>(m, "Modality")
      .value("IMAGE", Modality::kImage)
      .value("VIDEO", Modality::kVideo)
      .value("AUDIO", Modality::kAudio);
  m.def("modality_name", &modality_name, py::arg("modality"));
}

}  // namespace mmcore::bindings
