# The C++ core as a product: one set of objects (position-independent) built into a static and a
# shared library (versioned, with a SONAME), the headers other servers compile against, and the
# install rules for them, a CMake package (mmcore::engine) and a pkg-config file.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# Public API headers (stable within a minor version; docs/cpp_embedding.md lists them) ...
set(MMCORE_PUBLIC_HEADERS
    block_manager.h c_api.h encoder_cache.h placeholders.h request.h scheduler.h
    scheduler_config.h scheduler_output.h standalone_block_manager.h types.h version.h)
# ... and internal headers installed only because public ones include them (no stability promise).
set(MMCORE_DETAIL_HEADERS
    block_hash.h block_hash_map.h block_pool.h encoder_scheduling.h request_queue.h step_builder.h)

file(GLOB MMCORE_ENGINE_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cpp/engine/*.cc)
add_library(mmcore_engine_objects OBJECT ${MMCORE_ENGINE_SOURCES})
set_target_properties(mmcore_engine_objects PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_include_directories(mmcore_engine_objects PUBLIC ${PROJECT_SOURCE_DIR}/cpp)
target_compile_options(mmcore_engine_objects PRIVATE -Wall -Wextra -Wpedantic)

# In the build tree, <mmcore/x.h> resolves to cpp/engine/x.h (as after an install), and the
# repository's own code keeps "engine/x.h".
set(MMCORE_BUILD_INCLUDE_DIR ${PROJECT_BINARY_DIR}/include)
file(MAKE_DIRECTORY ${MMCORE_BUILD_INCLUDE_DIR})
if(NOT EXISTS ${MMCORE_BUILD_INCLUDE_DIR}/mmcore)
  file(CREATE_LINK ${PROJECT_SOURCE_DIR}/cpp/engine ${MMCORE_BUILD_INCLUDE_DIR}/mmcore SYMBOLIC)
endif()

# Wheels put everything inside the Python package (mmcore/include, mmcore/lib, mmcore/bin).
if(DEFINED SKBUILD)
  set(MMCORE_INSTALL_INCLUDEDIR mmcore/include)
  set(MMCORE_INSTALL_LIBDIR mmcore/lib)
  set(MMCORE_INSTALL_BINDIR mmcore/bin)
else()
  set(MMCORE_INSTALL_INCLUDEDIR ${CMAKE_INSTALL_INCLUDEDIR})
  set(MMCORE_INSTALL_LIBDIR ${CMAKE_INSTALL_LIBDIR})
  set(MMCORE_INSTALL_BINDIR ${CMAKE_INSTALL_BINDIR})
endif()
set(MMCORE_INSTALL_CMAKEDIR ${MMCORE_INSTALL_LIBDIR}/cmake/mmcore)

foreach(kind static shared)
  string(TOUPPER ${kind} _type)
  set(_target mmcore_engine_${kind})
  add_library(${_target} ${_type} $<TARGET_OBJECTS:mmcore_engine_objects>)
  target_include_directories(
    ${_target} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/cpp>
                      $<BUILD_INTERFACE:${MMCORE_BUILD_INCLUDE_DIR}>
                      $<INSTALL_INTERFACE:${MMCORE_INSTALL_INCLUDEDIR}>)
  target_compile_features(${_target} PUBLIC cxx_std_17)
  set_target_properties(${_target} PROPERTIES OUTPUT_NAME mmcore EXPORT_NAME engine_${kind}
                                              POSITION_INDEPENDENT_CODE ON)
endforeach()
# 0.x: every minor version may change the ABI, so the SONAME carries major.minor.
set_target_properties(mmcore_engine_shared PROPERTIES VERSION ${PROJECT_VERSION}
                      SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})
# The name the repository's own targets (bindings, tests, benchmarks) link.
add_library(mmcore_engine ALIAS mmcore_engine_static)

# --- install: headers, libraries, CMake package, pkg-config file ------------------------------
foreach(header ${MMCORE_PUBLIC_HEADERS} ${MMCORE_DETAIL_HEADERS})
  install(FILES ${PROJECT_SOURCE_DIR}/cpp/engine/${header}
          DESTINATION ${MMCORE_INSTALL_INCLUDEDIR}/mmcore COMPONENT mmcore_cpp)
endforeach()
install(TARGETS mmcore_engine_static mmcore_engine_shared EXPORT mmcoreTargets
        ARCHIVE DESTINATION ${MMCORE_INSTALL_LIBDIR} COMPONENT mmcore_cpp
        LIBRARY DESTINATION ${MMCORE_INSTALL_LIBDIR} COMPONENT mmcore_cpp
        RUNTIME DESTINATION ${MMCORE_INSTALL_BINDIR} COMPONENT mmcore_cpp)
install(EXPORT mmcoreTargets NAMESPACE mmcore:: DESTINATION ${MMCORE_INSTALL_CMAKEDIR}
        COMPONENT mmcore_cpp)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/mmcoreConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/mmcoreConfig.cmake
                              INSTALL_DESTINATION ${MMCORE_INSTALL_CMAKEDIR})
# 0.x: a request for 0.1 accepts 0.1.*, not 0.2.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mmcoreConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/mmcoreConfig.cmake ${PROJECT_BINARY_DIR}/mmcoreConfigVersion.cmake
        DESTINATION ${MMCORE_INSTALL_CMAKEDIR} COMPONENT mmcore_cpp)

# pkg-config: paths relative to the .pc file, so a wheel or a moved prefix still works.
set(_pc_dir ${MMCORE_INSTALL_LIBDIR}/pkgconfig)
file(RELATIVE_PATH MMCORE_PC_TO_PREFIX /root/${_pc_dir} /root)
string(REGEX REPLACE "/$" "" MMCORE_PC_TO_PREFIX "${MMCORE_PC_TO_PREFIX}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/mmcore.pc.in ${PROJECT_BINARY_DIR}/mmcore.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/mmcore.pc DESTINATION ${_pc_dir} COMPONENT mmcore_cpp)
