// mmcore._core: the C++ core exposed to Python. One bind_* function per component, each in
// its own file (declared in bindings.h); arrays cross as numpy without per-request objects.
#include <pybind11/pybind11.h>

#include "bindings/bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "mmcore C++ core: block manager, placeholders, encoder cache, scheduler";
  mmcore::bindings::bind_types(m);
  mmcore::bindings::bind_block_manager(m);
  mmcore::bindings::bind_scheduler(m);
  mmcore::bindings::bind_encoder_cache(m);
  mmcore::bindings::bind_mm_feature(m);
  mmcore::bindings::bind_placeholders(m);
}
