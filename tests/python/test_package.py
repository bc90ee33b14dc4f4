"""The installed package: version, core module, optional CUDA module."""

import mmcore
from mmcore import _core


def test_version_is_a_release_string():
    parts = mmcore.__version__.split(".")
    assert len(parts) >= 2 and all(p.isdigit() for p in parts[:2])


def test_core_module_loads():
    assert _core.modality_name(_core.Modality.IMAGE) == "image"
    assert _core.modality_name(_core.Modality.AUDIO) == "audio"


def test_has_cuda_kernels_matches_importability():
    try:
        from mmcore import _kernels  # noqa: F401

        importable = True
    except ImportError:
        importable = False
    assert mmcore.has_cuda_kernels() is importable
