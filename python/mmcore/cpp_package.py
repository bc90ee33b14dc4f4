"""Where the wheel keeps the C++ core for other builds: headers, libraries, CMake package,
pkg-config file and the benchmark binaries (as ``pybind11.get_cmake_dir()`` and
``numpy.get_include()`` do).

A C++ project finds the core with
``cmake -Dmmcore_DIR=$(python -m mmcore --cmake-dir)`` and ``find_package(mmcore CONFIG REQUIRED)``
(target ``mmcore::engine``); a C or C++ compiler takes ``-I$(python -m mmcore --include-dir)``.
See docs/cpp_embedding.md.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _installed(path: Path, what: str) -> str:
    if not path.exists():
        raise FileNotFoundError(
            f"mmcore's {what} is not at {path}: it is installed by the wheel (`pip install .`), "
            "not present in a source checkout (build and `cmake --install` the C++ core there, "
            "see docs/cpp_embedding.md)"
        )
    return str(path)


def get_include() -> str:
    """Return the folder to put on the include path: it holds ``mmcore/scheduler.h``, ``mmcore/c_api.h``...

    Returns:
        The absolute path of the wheel's ``mmcore/include`` folder.

    Raises:
        FileNotFoundError: when mmcore runs from a source checkout instead of an installed wheel.
    """
    return _installed(_PACKAGE_DIR / "include", "C++ include folder")


def get_cmake_dir() -> str:
    """Return the folder of ``mmcoreConfig.cmake`` (pass it as ``mmcore_DIR`` to CMake).

    Returns:
        The absolute path of the wheel's ``mmcore/lib/cmake/mmcore`` folder.

    Raises:
        FileNotFoundError: when mmcore runs from a source checkout instead of an installed wheel.
    """
    return _installed(_PACKAGE_DIR / "lib" / "cmake" / "mmcore", "CMake package")


def get_library_dir() -> str:
    """Return the folder of ``libmmcore.so`` and ``libmmcore.a``.

    Returns:
        The absolute path of the wheel's ``mmcore/lib`` folder.

    Raises:
        FileNotFoundError: when mmcore runs from a source checkout instead of an installed wheel.
    """
    return _installed(_PACKAGE_DIR / "lib", "C++ library folder")


def get_pkgconfig_dir() -> str:
    """Return the folder of ``mmcore.pc`` (add it to ``PKG_CONFIG_PATH``).

    Returns:
        The absolute path of the wheel's ``mmcore/lib/pkgconfig`` folder.

    Raises:
        FileNotFoundError: when mmcore runs from a source checkout instead of an installed wheel.
    """
    return _installed(_PACKAGE_DIR / "lib" / "pkgconfig", "pkg-config file")


def get_bench_binary(name: str) -> str:
    """Return the path of a shipped C++ benchmark binary.

    Args:
        name: ``"mmcore-bench-scheduler"`` or ``"mmcore-bench-block-manager"``.

    Returns:
        The absolute path of the executable in the wheel's ``mmcore/bin`` folder.

    Raises:
        ValueError: for another name.
        FileNotFoundError: when mmcore runs from a source checkout instead of an installed wheel.
    """
    if name not in ("mmcore-bench-scheduler", "mmcore-bench-block-manager"):
        raise ValueError(f"unknown benchmark binary {name!r}")
    return _installed(_PACKAGE_DIR / "bin" / name, f"benchmark binary {name}")
