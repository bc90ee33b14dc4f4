# CUTLASS/CuTe headers: from CUTLASS_DIR if set, else from the nvidia-cutlass wheel
# (cutlass_library.source_path + "/include"). Nothing is vendored.
set(MMCORE_CUTLASS_INCLUDE_DIR "")
if(DEFINED ENV{CUTLASS_DIR} AND NOT CUTLASS_DIR)
  set(CUTLASS_DIR $ENV{CUTLASS_DIR})
endif()
if(CUTLASS_DIR AND EXISTS "${CUTLASS_DIR}/include/cutlass/cutlass.h")
  set(MMCORE_CUTLASS_INCLUDE_DIR "${CUTLASS_DIR}/include")
else()
  find_package(Python COMPONENTS Interpreter QUIET)
  if(Python_EXECUTABLE)
    execute_process(
      COMMAND ${Python_EXECUTABLE} -c "import cutlass_library, os; print(os.path.join(cutlass_library.source_path, 'include'))"
      OUTPUT_VARIABLE _cutlass_inc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
    if(_rc EQUAL 0 AND EXISTS "${_cutlass_inc}/cutlass/cutlass.h")
      set(MMCORE_CUTLASS_INCLUDE_DIR "${_cutlass_inc}")
    endif()
  endif()
endif()
if(MMCORE_CUTLASS_INCLUDE_DIR)
  message(STATUS "mmcore: CUTLASS headers at ${MMCORE_CUTLASS_INCLUDE_DIR}")
else()
  message(STATUS "mmcore: CUTLASS headers not found (set CUTLASS_DIR or pip install nvidia-cutlass)")
endif()
