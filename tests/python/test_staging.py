"""HostStaging.tensors_to_device: a step's encoder inputs reach the device unchanged.

On CUDA the tensors go through a ring of pinned buffers (one copy per dtype); the GPU cases
check values, shapes and dtypes across more calls than the ring has slots, with the host
overwriting its source tensors right after each call, and that the first pass round the ring
never waits on the GPU (sync debug mode). On CPU the tensors pass through as they are.
"""

from __future__ import annotations

import pytest
import torch

from mmcore.engine import staging as staging_module
from mmcore.engine.staging import HostStaging


def _inputs(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(1, 3, 8 + seed, 8, generator=gen),
        torch.randint(0, 100, (2, 3), generator=gen),
        torch.randn(5, generator=gen).to(torch.bfloat16),
        torch.randn(4, 4, generator=gen)[:, ::2],  # a strided view
    ]


def test_cpu_tensors_pass_through():
    staging = HostStaging(torch.device("cpu"))
    tensors = _inputs(0)
    out = staging.tensors_to_device("encoder_inputs", tensors)
    assert all(a is b for a, b in zip(out, tensors))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("ring_max_bytes", [None, 16])
def test_cuda_ring_copies_every_call(monkeypatch, ring_max_bytes):
    if ring_max_bytes is not None:  # the per-tensor pinned path of large uploads
        monkeypatch.setattr(staging_module, "_RING_MAX_BYTES", ring_max_bytes)
    device = torch.device("cuda")
    staging = HostStaging(device)
    already = torch.arange(6, device=device)
    results = []
    for call in range(2 * staging_module._TENSOR_RING + 1):
        tensors = _inputs(call)
        expected = [t.clone() for t in tensors]
        torch.cuda._sleep(1_000_000)  # keep the stream busy: copies queue behind it
        # The first pass round the ring must not wait on the GPU (later ones may: slot reuse).
        torch.cuda.set_sync_debug_mode("error" if call < staging_module._TENSOR_RING else 0)
        try:
            out = staging.tensors_to_device("encoder_inputs", [*tensors, already])
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for t in tensors:
            t.fill_(-7)  # the host reuses its memory at once; the device copies must not see it
        assert out[-1] is already
        results.append((expected, out[:-1]))
    torch.cuda.synchronize()
    for expected, out in results:
        for want, got in zip(expected, out):
            assert got.device.type == "cuda" and got.dtype == want.dtype
            assert torch.equal(got.cpu(), want)
