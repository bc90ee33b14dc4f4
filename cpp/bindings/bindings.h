#pragma once
// Declarations of the per-component binding functions called by core_module.cc.
#include <pybind11/pybind11.h>

namespace mmcore::bindings {

void bind_types(pybind11::module_& m);
void bind_block_manager(pybind11::module_& m);
void bind_scheduler(pybind11::module_& m);
void bind_encoder_cache(pybind11::module_& m);
void bind_mm_feature(pybind11::module_& m);
void bind_placeholders(pybind11::module_& m);

}  // namespace mmcore::bindings
