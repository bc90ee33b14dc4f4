// _core.expand_placeholders and its item types; token ids cross as numpy int32 arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bindings/bindings.h"
#include "bindings/numpy_convert.h"
#include "engine/placeholders.h"

namespace py = pybind11;

namespace mmcore::bindings {
namespace {

PlaceholderItem make_item(Modality modality, std::string identifier, TokenId placeholder_token_id,
                          int32_t num_embeds, const py::object& replacement,
                          const py::object& embed_mask) {
  PlaceholderItem item;
  item.modality = modality;
  item.identifier = std::move(identifier);
  item.placeholder_token_id = placeholder_token_id;
  item.num_embeds = num_embeds;
  if (!replacement.is_none()) item.replacement = to_int32_vector(replacement, "replacement");
  item.embed_mask = to_mask_vector(embed_mask, "embed_mask");
  return item;
}

ExpandedPrompt expand(const py::object& prompt_token_ids, const std::vector<PlaceholderItem>& items,
                      const std::vector<Modality>& allowed_modalities, int32_t max_len,
                      const std::vector<PlaceholderToken>& placeholder_tokens) {
  const std::vector<TokenId> prompt = to_int32_vector(prompt_token_ids, "prompt_token_ids");
  py::gil_scoped_release no_gil;  // pure C++ from here on
  return expand_placeholders(prompt, items, allowed_modalities, max_len, placeholder_tokens);
}

}  // namespace

void bind_placeholders(py::module_& m) {
  py::class_<PlaceholderItem>(m, "PlaceholderItem",
                              "One multimodal item of a prompt: replaces its single placeholder "
                              "token by num_embeds copies, or by `replacement`.")
      .def(py::init(&make_item), py::arg("modality"), py::arg("identifier"),
           py::arg("placeholder_token_id"), py::arg("num_embeds") = 0,
           py::arg("replacement") = py::none(), py::arg("embed_mask") = py::none())
      .def_readonly("modality", &PlaceholderItem::modality)
      .def_readonly("identifier", &PlaceholderItem::identifier)
      .def_readonly("placeholder_token_id", &PlaceholderItem::placeholder_token_id)
      .def_readonly("num_embeds", &PlaceholderItem::num_embeds)
      .def_property_readonly(
          "replacement", [](const PlaceholderItem& it) { return to_numpy_copy(it.replacement); })
      .def_property_readonly("embed_mask",
                             [](const PlaceholderItem& it) { return to_numpy_copy(it.embed_mask); })
      .def(
          "expansion", [](const PlaceholderItem& it) { return to_numpy_copy(item_expansion(it)); },
          "The tokens this item occupies in an expanded prompt (int32 array).")
      .def("__repr__", [](const PlaceholderItem& it) {
        return std::string("PlaceholderItem(modality=") + modality_name(it.modality) +
               ", identifier='" + it.identifier +
               "', placeholder_token_id=" + std::to_string(it.placeholder_token_id) +
               ", num_embeds=" + std::to_string(it.num_embeds) +
               ", replacement_len=" + std::to_string(it.replacement.size()) + ")";
      });

  py::class_<PlaceholderToken>(m, "PlaceholderToken",
                               "A placeholder token the model knows, named in error messages.")
      .def(py::init([](TokenId token_id, Modality modality, std::string text) {
             return PlaceholderToken{token_id, modality, std::move(text)};
           }),
           py::arg("token_id"), py::arg("modality"), py::arg("text"))
      .def_readonly("token_id", &PlaceholderToken::token_id)
      .def_readonly("modality", &PlaceholderToken::modality)
      .def_readonly("text", &PlaceholderToken::text);

  py::class_<ExpandedPrompt>(m, "ExpandedPrompt")
      // A view on the C++ vector (no copy); the array keeps this object alive.
      .def_property_readonly("token_ids",
                             [](py::object self) {
                               auto& ids = self.cast<ExpandedPrompt&>().token_ids;
                               return py::array_t<TokenId>(static_cast<py::ssize_t>(ids.size()),
                                                           ids.data(), self);
                             })
      .def_readonly("features", &ExpandedPrompt::features);

  m.def("expand_placeholders", &expand, py::arg("prompt_token_ids"), py::arg("items"),
        py::arg("allowed_modalities"), py::arg("max_len"),
        py::arg("placeholder_tokens") = std::vector<PlaceholderToken>{},
        "Replace the one placeholder token per item by its expansion (already-expanded prompts "
        "are kept). Returns ExpandedPrompt(token_ids: int32 array, features: list[MMFeature] "
        "sorted by offset). Raises ValueError on count mismatch, a modality the model lacks, or "
        "a result longer than max_len.");
}

}  // namespace mmcore::bindings
