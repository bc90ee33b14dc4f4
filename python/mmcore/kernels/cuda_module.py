"""The compiled CUDA kernels module and the arguments every op wrapper hands it."""

from __future__ import annotations

import functools

import torch

#: dtype codes of the launchers (``DType`` in cpp/kernels/attention_params.h).
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
#: Code of ``torch.float8_e4m3fn``, taken by the KV-cache ops only (not a DTYPE_CODES entry: the
#: fused elementwise ops have no FP8 kernels).
FP8_E4M3_CODE = 3


@functools.cache
def kernels_module():
    """``mmcore._kernels``, or None when it was not built."""
    try:
        from mmcore import _kernels
    except ImportError:
        return None
    return _kernels


def rows_aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is contiguous and other strides are 16-byte multiples."""
    ok = t.stride(-1) == 1 and all(s % 8 == 0 for s in t.stride()[:-1]) and t.data_ptr() % 16 == 0
    return t if ok else t.contiguous()


def stream_handle(t: torch.Tensor) -> int:
    """The current CUDA stream of ``t``'s device, as the integer handle the launchers take."""
    return torch.cuda.current_stream(t.device).cuda_stream
