"""The C++ core as the wheel ships it: headers, libraries, CMake package, pkg-config file and
benchmark binaries. These tests need the installed wheel (CI runs the suite against it); from a
source checkout they are skipped, and tests/run.sh covers the same through `cmake --install`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mmcore
from mmcore import cpp_package

ROOT = Path(__file__).resolve().parents[2]
PY_OR_TORCH = re.compile(r"Python\.h|pybind11|torch|ATen|c10", re.IGNORECASE)


@pytest.fixture(scope="module")
def cmake_dir() -> Path:
    try:
        return Path(mmcore.get_cmake_dir())
    except FileNotFoundError:
        pytest.skip("mmcore is imported from a source checkout, not an installed wheel")


@pytest.fixture(scope="module")
def include_dir(cmake_dir) -> Path:
    return Path(mmcore.get_include())


@pytest.fixture(scope="module")
def shared_lib(cmake_dir) -> Path:
    libs = sorted(Path(cpp_package.get_library_dir()).glob("libmmcore.so.*.*.*"))
    assert len(libs) == 1, libs
    return libs[0]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_engine_sources_include_no_python_or_torch():
    # The source side of the promise (runs from a checkout too): the core never includes them.
    sources = sorted((ROOT / "cpp" / "engine").glob("*.[hc]*"))
    assert len(sources) > 20
    for path in sources:
        includes = re.findall(r"#include\s*[<\"]([^>\"]+)[>\"]", path.read_text())
        assert not [i for i in includes if PY_OR_TORCH.search(i)], path


def test_python_m_mmcore_prints_the_package_folders(cmake_dir, include_dir):
    out = _run([sys.executable, "-m", "mmcore", "--cmake-dir"]).stdout.strip()
    assert Path(out) == cmake_dir and (cmake_dir / "mmcoreConfig.cmake").is_file()
    out = _run([sys.executable, "-m", "mmcore", "--include-dir"]).stdout.strip()
    assert Path(out) == include_dir and (include_dir / "mmcore" / "c_api.h").is_file()
    out = _run([sys.executable, "-m", "mmcore", "--pkgconfig-dir"]).stdout.strip()
    assert (Path(out) / "mmcore.pc").is_file()
    # The commands still work next to the flags.
    assert "mmcore " in _run([sys.executable, "-m", "mmcore", "info"]).stdout


def test_header_version_is_the_package_version(include_dir):
    text = (include_dir / "mmcore" / "version.h").read_text()
    version = re.search(r'#define MMCORE_VERSION_STRING "([^"]+)"', text).group(1)
    assert version == mmcore.__version__


def test_shared_library_has_a_versioned_soname(shared_lib):
    dynamic = _run(["readelf", "-d", str(shared_lib)]).stdout
    major, minor = mmcore.__version__.split(".")[:2]
    assert f"Library soname: [libmmcore.so.{major}.{minor}]" in dynamic
    assert (shared_lib.parent / "libmmcore.a").is_file()


def test_no_python_or_torch_in_headers_or_library(include_dir, shared_lib):
    headers = sorted((include_dir / "mmcore").glob("*.h"))
    assert {h.name for h in headers} >= {"scheduler.h", "c_api.h", "placeholders.h", "version.h"}
    for header in headers:
        includes = re.findall(r"#include\s*[<\"]([^>\"]+)[>\"]", header.read_text())
        assert not [i for i in includes if PY_OR_TORCH.search(i)], header
        # Every local ("...") include is installed too: the headers are self-contained.
        for inc in re.findall(r'#include\s*"([^"]+)"', header.read_text()):
            assert (header.parent / inc).is_file(), f"{header.name} includes missing {inc}"
    needed = re.findall(
        r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
        _run(["readelf", "-d", str(shared_lib)]).stdout,
    )
    assert needed and not [n for n in needed if PY_OR_TORCH.search(n) or "python" in n], needed
    undefined = _run(["nm", "-D", "--undefined-only", str(shared_lib)]).stdout
    assert not re.search(r"\bPy[A-Z_]\w+|_Py\w+|torch|c10", undefined)


def test_every_installed_header_compiles_on_its_own(include_dir, tmp_path):
    for header in sorted((include_dir / "mmcore").glob("*.h")):
        src = tmp_path / f"{header.stem}.cc"
        src.write_text(f"#include <mmcore/{header.name}>\nint main() {{ return 0; }}\n")
        _run(
            ["c++", "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", f"-I{include_dir}", str(src)]
        )
    c_src = tmp_path / "c_api_only.c"
    c_src.write_text("#include <mmcore/c_api.h>\nint main(void) { return 0; }\n")
    _run(["cc", "-std=c11", "-fsyntax-only", "-Wall", "-Werror", f"-I{include_dir}", str(c_src)])


def test_example_server_loop_builds_with_find_package_and_runs(cmake_dir, tmp_path):
    build = tmp_path / "example"
    _run(
        [
            "cmake",
            "-S",
            str(ROOT / "examples" / "cpp_server_loop"),
            "-B",
            str(build),
            f"-Dmmcore_DIR={cmake_dir}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
    )
    _run(["cmake", "--build", str(build), "-j2"])
    out = _run([str(build / "cpp_server_loop"), "--quiet"]).stdout
    assert out.strip().endswith("OK"), out
    assert re.search(
        r"\d+ admitted, 3 refused, \d+ finished, [1-9]\d* aborted, [1-9]\d* preemptions", out
    )


def test_c_api_contract_test_builds_with_pkg_config_and_passes(cmake_dir, tmp_path):
    if shutil.which("pkg-config") is None:
        pytest.fail("pkg-config is needed to check the installed mmcore.pc")
    env = {"PKG_CONFIG_PATH": cpp_package.get_pkgconfig_dir(), "PATH": "/usr/bin:/bin"}
    flags = _run(["pkg-config", "--cflags", "--libs", "mmcore"], env=env).stdout.split()
    exe = tmp_path / "c_api_test"
    libdir = cpp_package.get_library_dir()
    _run(
        [
            "cc",
            "-std=c11",
            str(ROOT / "tests" / "cpp" / "c_api_test.c"),
            *flags,
            f"-Wl,-rpath,{libdir}",
            "-o",
            str(exe),
        ]
    )
    assert _run([str(exe)]).stdout.strip().endswith(", 0 failed")


def _console_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"console script {name} is not installed"
    return found


def test_bench_scheduler_console_script_prints_json(cmake_dir):
    script = _console_script("mmcore-bench-scheduler")
    base = [script, "--running", "16,32", "--steps", "60", "--warmup", "20", "--output-len", "16"]
    reports = {
        rate: json.loads(_run([*base, "--hit-rate", rate, "--json"]).stdout)
        for rate in ("0", "0.5")
    }
    for rate, report in reports.items():
        assert report["benchmark"] == "scheduler" and report["workload"]["hit_rate"] == float(rate)
        assert [r["running"] for r in report["results"]] == [16, 32]
        for row in report["results"]:
            assert row["mean_us_per_step"] > 0 and 0 < row["reqs_per_step"] <= row["running"]
    # Random prompts never hit the prefix cache; repeated ones do.
    assert all(r["prefix_hit_rate"] == 0 for r in reports["0"]["results"])
    assert all(0.1 < r["prefix_hit_rate"] < 1 for r in reports["0.5"]["results"])
    bad = subprocess.run([script, "--running", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--running" in bad.stderr


def test_bench_block_manager_console_script_prints_json(cmake_dir):
    script = _console_script("mmcore-bench-block-manager")
    cmd = [
        script,
        "--requests",
        "64",
        "--prompt-len",
        "256",
        "--rounds",
        "2",
        "--hit-rate",
        "0.25",
        "--json",
    ]
    report = json.loads(_run(cmd).stdout)
    assert report["benchmark"] == "block_manager"
    assert report["results"]["measured_hit_rate"] == pytest.approx(0.25)
    assert report["results"]["allocate_decode_token_ns"] > 0
    bad = subprocess.run([script, "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown flag --no-such-flag" in bad.stderr
