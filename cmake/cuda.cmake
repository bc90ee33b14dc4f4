# Builds mmcore._kernels when a CUDA compiler exists and MMCORE_CUDA is not OFF/0.
set(MMCORE_HAS_CUDA OFF)
string(TOUPPER "${MMCORE_CUDA}" _mmcore_cuda)
if(_mmcore_cuda STREQUAL "OFF" OR _mmcore_cuda STREQUAL "0" OR NOT MMCORE_BUILD_PYTHON)
  message(STATUS "mmcore: CUDA kernels disabled (MMCORE_CUDA=${MMCORE_CUDA})")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(_mmcore_cuda STREQUAL "ON" OR _mmcore_cuda STREQUAL "1")
    message(FATAL_ERROR "mmcore: MMCORE_CUDA=ON but no CUDA compiler was found")
  endif()
  message(STATUS "mmcore: no CUDA compiler found; building without CUDA kernels")
  return()
endif()

set(CMAKE_CUDA_ARCHITECTURES ${MMCORE_CUDA_ARCHS})
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(MMCORE_HAS_CUDA ON)
include(third_party/cutlass.cmake)

file(GLOB MMCORE_KERNEL_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cpp/kernels/*.cu
     ${PROJECT_SOURCE_DIR}/cpp/kernels/*.cc)
# The CUDA kernels are the longest step of `pip install .`: say so before it starts.
list(LENGTH MMCORE_KERNEL_SOURCES _mmcore_num_kernel_sources)
message(STATUS "mmcore: compiling ${_mmcore_num_kernel_sources} CUDA kernel sources for "
               "architectures ${MMCORE_CUDA_ARCHS}: the longest build step (minutes; "
               "MMCORE_CUDA_ARCHS=90a builds one architecture, MMCORE_CUDA=0 skips the kernels)")
pybind11_add_module(_kernels MODULE ${MMCORE_KERNEL_SOURCES})
target_include_directories(_kernels PRIVATE ${PROJECT_SOURCE_DIR}/cpp)
# The binding (.cc, host compiler) includes launcher headers that name cudaStream_t.
target_include_directories(_kernels SYSTEM PRIVATE ${CMAKE_CUDA_TOOLKIT_INCLUDE_DIRECTORIES})
if(MMCORE_CUTLASS_INCLUDE_DIR)
  target_include_directories(_kernels SYSTEM PRIVATE ${MMCORE_CUTLASS_INCLUDE_DIR})
  target_compile_definitions(_kernels PRIVATE MMCORE_HAS_CUTLASS=1)
  # The Hopper attention kernel (CuTe GMMA) needs the sm90a target.
  if("90a" IN_LIST MMCORE_CUDA_ARCHS)
    target_compile_definitions(_kernels PRIVATE MMCORE_SM90A_ATTENTION=1)
    message(STATUS "mmcore: Hopper (sm90a) attention kernel enabled")
  endif()
endif()
target_compile_options(_kernels PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -lineinfo>)
set_target_properties(_kernels PROPERTIES CUDA_RUNTIME_LIBRARY Static)
if(DEFINED SKBUILD)
  install(TARGETS _kernels LIBRARY DESTINATION mmcore)
else()
  set_target_properties(_kernels PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${PROJECT_SOURCE_DIR}/python/mmcore)
endif()
message(STATUS "mmcore: CUDA kernels for architectures ${CMAKE_CUDA_ARCHITECTURES}")
