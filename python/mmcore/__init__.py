"""mmcore: a multimodal LLM inference engine.

The C++ core (``mmcore._core``) schedules requests and manages the KV cache; the optional
CUDA module (``mmcore._kernels``) holds the attention kernels; models run in PyTorch.

    >>> from mmcore import LLM, SamplingParams  # LLM is Engine, under vLLM's name
    >>> engine = LLM("llava-hf/llava-1.5-7b-hf")  # a folder, or a hub id from the HF cache
    >>> engine.generate({"prompt": "USER: <image>\\nWhat is this?\\nASSISTANT:",
    ...                  "multi_modal_data": {"image": image}}, SamplingParams(max_tokens=32))
"""

from __future__ import annotations

from importlib import import_module
from importlib import metadata as _metadata

from mmcore.cpp_package import get_cmake_dir, get_include

try:
    __version__ = _metadata.version("mmcore")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"

# Heavy modules (torch, transformers) load on first use, so `mmcore info` stays fast.
_LAZY = {
    "Engine": "mmcore.engine.engine",
    "LLM": "mmcore.engine.engine",
    "EngineArgs": "mmcore.engine_args",
    "DataParallelEngine": "mmcore.engine.data_parallel",
    "SamplingParams": "mmcore.sampling_params",
    "StructuredOutputsParams": "mmcore.sampling_params",
    "GuidedDecodingParams": "mmcore.sampling_params",
    "Logprob": "mmcore.outputs",
    "RequestMetrics": "mmcore.outputs",
    "RequestOutput": "mmcore.outputs",
    "CompletionOutput": "mmcore.outputs",
    "register_model": "mmcore.multimodal.registry",
}


def __getattr__(name: str):
    if name in _LAZY:
        # vLLM's ``LLM`` is mmcore's ``Engine``: one class, two names.
        return getattr(import_module(_LAZY[name]), "Engine" if name == "LLM" else name)
    raise AttributeError(f"module 'mmcore' has no attribute {name!r}")


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


__all__ = [
    "__version__",
    "has_cuda_kernels",
    "get_cmake_dir",
    "get_include",
    "Engine",
    "LLM",
    "EngineArgs",
    "SamplingParams",
    "StructuredOutputsParams",
    "GuidedDecodingParams",
    "Logprob",
    "RequestMetrics",
    "RequestOutput",
    "CompletionOutput",
    "register_model",
]
