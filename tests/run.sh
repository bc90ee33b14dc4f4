#!/usr/bin/env bash
# The whole test suite: installs mmcore (and CPU torch if no torch is present), then runs the
# C++ unit tests and the C API test (plain and under ASan+UBSan), builds the embedding example and
# the C API test against an installed copy of the C++ package, the linters, and the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=${JOBS:-$(nproc)}

python -m pip --version >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q ".[test]"

echo "== C++ unit tests"
cmake -S . -B build/ctest -DMMCORE_BUILD_PYTHON=OFF -DMMCORE_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/ctest -j "$JOBS"
ctest --test-dir build/ctest --output-on-failure -j "$JOBS"

echo "== C++ package: install into a clean prefix, build against it with find_package and pkg-config"
PREFIX=$(mktemp -d)
trap 'rm -rf "$PREFIX"' EXIT
cmake --install build/ctest --prefix "$PREFIX" >/dev/null
for linkage in shared static; do  # mmcore::engine as the shared, then the static library
  use_static=$([ "$linkage" = static ] && echo ON || echo OFF)
  cmake -S examples/cpp_server_loop -B "build/example-$linkage" -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DMMCORE_USE_STATIC_LIBS="$use_static" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "build/example-$linkage" -j "$JOBS"
  "build/example-$linkage/cpp_server_loop" --quiet
done
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror tests/cpp/c_api_test.c \
  $(PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" pkg-config --cflags --libs mmcore) \
  -Wl,-rpath,"$PREFIX/lib" -o build/c_api_test_installed
build/c_api_test_installed

echo "== C++ unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build/asan -DMMCORE_BUILD_PYTHON=OFF -DMMCORE_BUILD_TESTS=ON -DMMCORE_BUILD_BENCH=OFF -DMMCORE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build/asan --output-on-failure -j "$JOBS"

echo "== lint"
ruff check python tests bench
ruff format --check python tests bench
find cpp tests/cpp bench examples -name '*.h' -o -name '*.cc' -o -name '*.c' -o -name '*.cu' -o -name '*.cuh' | xargs clang-format --dry-run -Werror

echo "== Python tests (the installed wheel)"
cd /tmp && python -m pytest -q -p no:cacheprovider "$ROOT/tests/python" "$@"
