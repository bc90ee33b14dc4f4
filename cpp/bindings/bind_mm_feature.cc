// _core.MMFeature: one multimodal item inside an expanded prompt (immutable value).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <numeric>
#include <string>

#include "bindings/bindings.h"
#include "bindings/numpy_convert.h"
#include "engine/types.h"

namespace py = pybind11;

namespace mmcore::bindings {
namespace {

MMFeature make_feature(Modality modality, std::string identifier, int32_t offset, int32_t length,
                       int32_t num_embeds, const py::object& embed_mask) {
  MMFeature f;
  f.modality = modality;
  f.identifier = std::move(identifier);
  f.offset = offset;
  f.length = length;
  f.num_embeds = num_embeds;
  f.embed_mask = to_mask_vector(embed_mask, "embed_mask");
  const std::string name = "feature '" + f.identifier + "'";
  if (f.identifier.empty()) throw py::value_error("feature identifier must not be empty");
  if (offset < 0) throw py::value_error(name + " has a negative offset " + std::to_string(offset));
  if (length <= 0)
    throw py::value_error(name + " must have length > 0, got " + std::to_string(length));
  if (!f.embed_mask.empty() && f.embed_mask.size() != static_cast<size_t>(length)) {
    throw py::value_error(name + " has an embed_mask of " + std::to_string(f.embed_mask.size()) +
                          " entries for length " + std::to_string(length));
  }
  // An all-ones mask is the same as no mask: keep one representation.
  const int32_t masked =
      f.embed_mask.empty() ? length : std::accumulate(f.embed_mask.begin(), f.embed_mask.end(), 0);
  if (masked == length) f.embed_mask.clear();
  if (num_embeds != masked) {
    throw py::value_error(name + " has num_embeds " + std::to_string(num_embeds) + " but " +
                          std::to_string(masked) + " positions take embeddings");
  }
  return f;
}

std::string feature_repr(const MMFeature& f) {
  return std::string("MMFeature(modality=") + modality_name(f.modality) + ", identifier='" +
         f.identifier + "', offset=" + std::to_string(f.offset) +
         ", length=" + std::to_string(f.length) + ", num_embeds=" + std::to_string(f.num_embeds) +
         (f.embed_mask.empty() ? "" : ", masked") + ")";
}

}  // namespace

void bind_mm_feature(py::module_& m) {
  py::class_<MMFeature>(m, "MMFeature",
                        "One multimodal item in an expanded prompt: tokens [offset, offset + "
                        "length) belong to it; embed_mask (empty = all) marks the positions that "
                        "take an encoder embedding.")
      .def(py::init(&make_feature), py::arg("modality"), py::arg("identifier"), py::arg("offset"),
           py::arg("length"), py::arg("num_embeds"), py::arg("embed_mask") = py::none())
      .def_readonly("modality", &MMFeature::modality)
      .def_readonly("identifier", &MMFeature::identifier)
      .def_readonly("offset", &MMFeature::offset)
      .def_readonly("length", &MMFeature::length)
      .def_readonly("num_embeds", &MMFeature::num_embeds)
      .def_property_readonly("embed_mask",
                             [](const MMFeature& f) { return to_numpy_copy(f.embed_mask); })
      .def("__eq__",
           [](const MMFeature& a, const MMFeature& b) {
             return a.modality == b.modality && a.identifier == b.identifier &&
                    a.offset == b.offset && a.length == b.length && a.num_embeds == b.num_embeds &&
                    a.embed_mask == b.embed_mask;
           })
      .def("__repr__", &feature_repr);
}

}  // namespace mmcore::bindings
