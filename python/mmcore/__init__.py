"""mmcore: a multimodal LLM inference engine.

The C++ core (``mmcore._core``) schedules requests and manages the KV cache; the optional
CUDA module (``mmcore._kernels``) holds the attention kernels; models run in PyTorch.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("mmcore")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"


def has_cuda_kernels() -> bool:
    """Return True when the CUDA kernels module ``mmcore._kernels`` was built and imports.

    Returns:
        Whether ``mmcore._kernels`` is importable. It is built by ``pip install .`` only where a
        CUDA compiler exists and ``MMCORE_CUDA`` is not ``0``/``OFF``.
    """
    try:
        from mmcore import _kernels  # noqa: F401
    except ImportError:
        return False
    return True


from mmcore.multimodal.registry import register_model  # noqa: E402

__all__ = ["__version__", "has_cuda_kernels", "register_model"]
