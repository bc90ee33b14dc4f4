#ifndef MMCORE_VERSION_H_
#define MMCORE_VERSION_H_
/* The version of the mmcore C++ core (the same as the Python package's). Plain C: included by
 * the C API too. While the major version is 0, every minor release may change the ABI (the
 * shared library's SONAME carries major.minor). */

#define MMCORE_VERSION_MAJOR 0
#define MMCORE_VERSION_MINOR 1
#define MMCORE_VERSION_PATCH 0
#define MMCORE_VERSION_STRING "0.1.0"
/* One comparable number: 10000 * major + 100 * minor + patch. */
#define MMCORE_VERSION \
  (MMCORE_VERSION_MAJOR * 10000 + MMCORE_VERSION_MINOR * 100 + MMCORE_VERSION_PATCH)

#endif /* MMCORE_VERSION_H_ */
