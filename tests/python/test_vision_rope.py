"""The vision towers' 2-D rope op (``vision_rotary_embedding``): the reference against a
per-token formula, its input checks, and the CUDA kernel against the reference bit for bit."""

from __future__ import annotations

import pytest
import torch

from mmcore.kernels import reference
from mmcore.kernels.vision_rope import vision_rotary_embedding
from mmcore.models.qwen2_vl.vision import VisionRotary


class _Config:
    rope_parameters = {"rope_theta": 10000.0}


def _inputs(num_tokens: int, heads: int, head_dim: int, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(num_tokens, 3, heads, head_dim, generator=g).to(device, dtype)
    q, k, _ = qkv.unbind(1)  # strided views, as the tower's fused projection gives them
    positions = torch.randint(0, 60, (2, num_tokens), generator=g).to(device)
    return q, k, positions


@pytest.mark.parametrize("head_dim", [80, 64, 16])
def test_reference_rotates_rows_then_columns_in_float32(head_dim):
    rotary = VisionRotary(_Config(), head_dim, torch.device("cpu"))
    cache = rotary.cos_sin_cache(60)
    q, k, positions = _inputs(37, 3, head_dim, torch.bfloat16)
    q_out, k_out = reference.vision_rotary_embedding(positions, q, k, cache, rotary.sections)
    quarter, half = head_dim // 4, head_dim // 2
    for t in (0, 5, 36):
        row, col = positions[:, t].tolist()
        angles = torch.cat((row * rotary.inv_freq, col * rotary.inv_freq))  # [half]
        cos, sin = torch.cat((angles.cos(),) * 2), torch.cat((angles.sin(),) * 2)
        for x, out in ((q, q_out), (k, k_out)):
            xf = x[t].float()
            rotated = torch.cat((-xf[:, half:], xf[:, :half]), dim=-1)
            expected = (xf * cos + rotated * sin).to(torch.bfloat16)
            assert torch.equal(out[t], expected), (t, row, col)
    assert quarter == rotary.sections[0] == rotary.sections[1]


def test_bad_inputs_are_refused():
    rotary = VisionRotary(_Config(), 80, torch.device("cpu"))
    cache = rotary.cos_sin_cache(60)
    q, k, positions = _inputs(4, 2, 80, torch.float32)
    with pytest.raises(ValueError, match="sections"):
        vision_rotary_embedding(positions, q, k, cache, [20, 21])
    with pytest.raises(ValueError, match="positions"):
        vision_rotary_embedding(positions[:, :3], q, k, cache, [20, 20])
    with pytest.raises(ValueError, match="float32"):
        vision_rotary_embedding(positions, q, k, cache.half(), [20, 20])
    with pytest.raises(ValueError, match="head dims"):
        vision_rotary_embedding(positions, q, k[..., :40], cache, [20, 20])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [80, 64])
@pytest.mark.parametrize("num_tokens", [1, 1000])
def test_cuda_kernel_equals_reference(dtype, head_dim, num_tokens):
    rotary = VisionRotary(_Config(), head_dim, torch.device("cuda"))
    cache = rotary.cos_sin_cache(60)
    q, k, positions = _inputs(num_tokens, 16, head_dim, dtype, "cuda", seed=num_tokens)
    got = vision_rotary_embedding(positions, q, k, cache, rotary.sections)
    want = reference.vision_rotary_embedding(positions, q, k, cache, rotary.sections)
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.is_contiguous()
        assert torch.equal(a, b)
