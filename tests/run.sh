#!/usr/bin/env bash
# The whole test suite: installs mmcore (and CPU torch if no torch is present), then runs the
# C++ unit tests (plain and under ASan+UBSan), the linters, and the Python tests.
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

echo "== C++ unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build/asan -DMMCORE_BUILD_PYTHON=OFF -DMMCORE_BUILD_TESTS=ON -DMMCORE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build/asan -j "$JOBS"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build/asan --output-on-failure -j "$JOBS"

echo "== lint"
ruff check python tests bench
ruff format --check python tests bench
find cpp tests/cpp bench -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' | xargs clang-format --dry-run -Werror

echo "== Python tests (the installed wheel)"
cd /tmp && python -m pytest -q -p no:cacheprovider "$ROOT/tests/python" "$@"
