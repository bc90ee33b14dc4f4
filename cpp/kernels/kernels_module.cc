// mmcore._kernels: launchers of the CUDA kernels. Arguments are raw device pointers (ints),
// sizes, strides and a CUDA stream handle; torch custom ops in python/mmcore/kernels wrap them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "kernels/probe.h"

namespace py = pybind11;

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "mmcore CUDA kernels";
  m.def("device_count", &mmcore::kernels::device_count, "Number of visible CUDA devices.");
  m.def(
      "probe_saxpy",
      [](float a, py::array_t<float, py::array::c_style | py::array::forcecast> x,
         py::array_t<float, py::array::c_style | py::array::forcecast> y) {
        if (x.size() != y.size())
          throw std::invalid_argument("probe_saxpy: x and y differ in size");
        py::array_t<float> out(x.size());
        const std::string err = mmcore::kernels::probe_saxpy(
            static_cast<int>(x.size()), a, x.data(), y.data(), out.mutable_data());
        if (!err.empty()) throw std::runtime_error("probe_saxpy: " + err);
        return out;
      },
      py::arg("a"), py::arg("x"), py::arg("y"), "a * x + y computed by a CUDA kernel.");
}
