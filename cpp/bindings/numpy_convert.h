#pragma once
// numpy <-> std::vector conversions shared by binding files: one copy of the buffer, no
// per-element Python objects.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace mmcore::bindings {

// Values of an integer array widened to Wide, each checked to fit in int32.
template <typename Wide>
std::vector<int32_t> checked_int32(const pybind11::array& arr, const char* what) {
  namespace py = pybind11;
  auto wide = py::array_t<Wide, py::array::c_style | py::array::forcecast>::ensure(arr);
  std::vector<int32_t> out(static_cast<size_t>(wide.size()));
  const Wide* data = wide.data();
  for (size_t i = 0; i < out.size(); ++i) {
    const bool fits = data[i] <= static_cast<Wide>(std::numeric_limits<int32_t>::max()) &&
                      (std::is_unsigned<Wide>::value ||
                       data[i] >= static_cast<Wide>(std::numeric_limits<int32_t>::min()));
    if (!fits) {
      throw py::value_error(std::string(what) + "[" + std::to_string(i) +
                            "] = " + std::to_string(data[i]) + " does not fit in int32");
    }
    out[i] = static_cast<int32_t>(data[i]);
  }
  return out;
}

// A 1-D integer array (numpy of any integer dtype, or a sequence of ints) as int32 values.
// Raises ValueError naming `what` for other shapes/dtypes or values outside int32.
inline std::vector<int32_t> to_int32_vector(const pybind11::handle& obj, const char* what) {
  namespace py = pybind11;
  py::array arr = py::array::ensure(obj);
  if (!arr) throw py::value_error(std::string(what) + " must be a 1-D array of integers");
  if (arr.ndim() != 1) {
    throw py::value_error(std::string(what) + " must be 1-D, got " + std::to_string(arr.ndim()) +
                          " dimensions");
  }
  if (arr.size() == 0) return {};
  const char kind = arr.dtype().kind();
  if (kind != 'i' && kind != 'u') {
    throw py::value_error(std::string(what) + " must hold integers, got dtype " +
                          std::string(py::str(arr.dtype())));
  }
  if (arr.dtype().is(py::dtype::of<int32_t>())) {
    auto a = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    return std::vector<int32_t>(a.data(), a.data() + a.size());
  }
  if (kind == 'u') return checked_int32<uint64_t>(arr, what);
  return checked_int32<int64_t>(arr, what);
}

// A Python integer as int32; ValueError naming `what` for non-integers or values outside int32
// (pybind11's own conversion raises TypeError, which callers handling bad input miss).
inline int32_t to_int32_scalar(const pybind11::handle& obj, const char* what) {
  namespace py = pybind11;
  if (!py::isinstance<py::int_>(obj)) {
    throw py::value_error(std::string(what) + " must be an integer, got " +
                          std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  const py::int_ value = py::reinterpret_borrow<py::int_>(obj);
  const py::int_ lo(std::numeric_limits<int32_t>::min());
  const py::int_ hi(std::numeric_limits<int32_t>::max());
  if (value < lo || value > hi) {
    throw py::value_error(std::string(what) + " = " + std::string(py::str(obj)) +
                          " does not fit in int32");
  }
  return value.cast<int32_t>();
}

// A 1-D mask (bools or integers) as 0/1 bytes; None -> empty.
inline std::vector<uint8_t> to_mask_vector(const pybind11::handle& obj, const char* what) {
  namespace py = pybind11;
  if (obj.is_none()) return {};
  py::array arr = py::array::ensure(obj);
  if (!arr || arr.ndim() != 1) throw py::value_error(std::string(what) + " must be 1-D");
  if (arr.size() == 0) return {};
  const char kind = arr.dtype().kind();
  if (kind != 'b' && kind != 'i' && kind != 'u') {
    throw py::value_error(std::string(what) + " must hold booleans or integers, got dtype " +
                          std::string(py::str(arr.dtype())));
  }
  auto as_bool = py::array_t<bool, py::array::c_style | py::array::forcecast>::ensure(
      arr.attr("astype")("bool"));
  std::vector<uint8_t> out(static_cast<size_t>(as_bool.size()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = as_bool.data()[i] ? 1 : 0;
  return out;
}

// A copy of `values` as a new numpy array.
template <typename T>
pybind11::array_t<T> to_numpy_copy(const std::vector<T>& values) {
  pybind11::array_t<T> arr(static_cast<pybind11::ssize_t>(values.size()));
  std::copy(values.begin(), values.end(), arr.mutable_data());
  return arr;
}

}  // namespace mmcore::bindings
