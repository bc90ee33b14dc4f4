"""HostStaging: a step's arrays and encoder inputs reach the device unchanged, without waiting.

On CUDA the tensors go through a ring of pinned buffers (one copy per dtype); the GPU cases
check values, shapes and dtypes across more calls than the ring has slots, with the host
overwriting its source tensors right after each call, that no call synchronises (sync debug
mode), and that staging a step never waits for the GPU work queued before it (the previous
step's buffers are not the ones reused). On CPU the tensors pass through as they are.
"""

from __future__ import annotations

import numpy as np
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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_staging_a_step_never_waits_for_the_step_still_running():
    staging = HostStaging(torch.device("cuda"))
    busy, results = [], []
    for step in range(4):
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU work: the "running step"
        busy.append(torch.cuda.Event())
        busy[-1].record()
        rows = staging.to_device("logits_indices", np.arange(5) + step, torch.long)
        items = staging.tensors_to_device("encoder_inputs", [torch.full((3,), float(step))])
        if step:  # reusing the last step's buffers would have waited for the last step's work
            assert not busy[-2].query()
        results.append((rows, items[0]))
    torch.cuda.synchronize()
    for step, (rows, item) in enumerate(results):
        assert rows.tolist() == list(range(step, step + 5))
        assert item.tolist() == [float(step)] * 3
