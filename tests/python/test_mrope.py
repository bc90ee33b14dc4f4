"""M-RoPE rotation: the torch reference against HF Qwen2-VL, and the CUDA kernel against it."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2VLTextConfig
from transformers.models.qwen2_vl import modeling_qwen2_vl as hf_qwen2_vl

from mmcore.kernels import reference
from mmcore.layers.rotary import MRotaryEmbedding

HEAD_DIM = 32
SECTION = [4, 6, 6]


def _config(section=SECTION) -> Qwen2VLTextConfig:
    return Qwen2VLTextConfig(
        hidden_size=HEAD_DIM * 2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
    )


def _inputs(num_tokens: int, seed: int = 0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, 200, (3, num_tokens), generator=g)
    q = torch.randn(num_tokens, 4, HEAD_DIM, generator=g).to(device, dtype)
    k = torch.randn(num_tokens, 2, HEAD_DIM, generator=g).to(device, dtype)
    return positions.to(device), q, k


def test_reference_matches_hf_qwen2_vl():
    config = _config()
    positions, q, k = _inputs(37)
    hf_rope = hf_qwen2_vl.Qwen2VLRotaryEmbedding(config)
    cos, sin = hf_rope(q, positions[:, None, :])  # [3, bs, T] positions
    hf_q, hf_k = hf_qwen2_vl.apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin
    )
    layer = MRotaryEmbedding(config, HEAD_DIM, device=torch.device("cpu"))
    got_q, got_k = layer(positions, q, k)
    torch.testing.assert_close(got_q, hf_q[0].transpose(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(got_k, hf_k[0].transpose(0, 1), rtol=0, atol=0)


def test_equal_rows_equal_plain_rope():
    layer = MRotaryEmbedding(_config(), HEAD_DIM, device=torch.device("cpu"))
    positions, q, k = _inputs(9)
    rows = positions[0].expand(3, -1)
    plain = layer(positions[0], q, k)
    three = layer(rows, q, k)
    assert torch.equal(plain[0], three[0]) and torch.equal(plain[1], three[1])


def test_custom_op_checks_inputs_and_matches_the_reference_on_cpu():
    from mmcore.kernels import fused_ops

    positions, q, k = _inputs(7)
    layer = MRotaryEmbedding(_config(), HEAD_DIM, device=torch.device("cpu"))
    got = fused_ops.mrope_rotary_embedding(positions, q, k, layer.cos_sin_cache, SECTION)
    ref = reference.mrope_rotary_embedding(positions, q, k, layer.cos_sin_cache, SECTION)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    with pytest.raises(ValueError, match=r"positions must be \[3, T\]"):
        fused_ops.mrope_rotary_embedding(positions[:2], q, k, layer.cos_sin_cache, SECTION)
    with pytest.raises(ValueError, match="mrope_section"):
        fused_ops.mrope_rotary_embedding(positions, q, k, layer.cos_sin_cache, [8, 8, 8])


def test_bad_sections_are_refused():
    with pytest.raises(ValueError, match="head_dim / 2"):
        MRotaryEmbedding(_config([4, 4, 4]), HEAD_DIM, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="mrope_section"):
        reference.mrope_columns([8, 8], HEAD_DIM)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("section", [[16, 24, 24], [3, 7, 6], [8, 0, 8]])
@pytest.mark.parametrize("num_tokens", [1, 5, 300])
def test_cuda_kernel_matches_reference(dtype, section, num_tokens):
    from mmcore.kernels import ops

    head_dim = 2 * sum(section)
    g = torch.Generator().manual_seed(num_tokens)
    positions = torch.randint(0, 500, (3, num_tokens), generator=g).cuda()
    # q and k as strided views of one fused projection, as the attention layers pass them
    qkv = torch.randn(num_tokens, 8 * head_dim, generator=g).to("cuda", dtype)
    q = qkv[:, : 6 * head_dim].view(num_tokens, 6, head_dim)
    k = qkv[:, 6 * head_dim :].view(num_tokens, 2, head_dim)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    cache = reference.rotary_cos_sin_cache(inv_freq.cuda(), 512, 1.0, dtype)
    got_q, got_k = ops.mrope_rotary_embedding(positions, q, k, cache, section)
    ref_q, ref_k = reference.mrope_rotary_embedding(positions, q, k, cache, section)
    assert torch.equal(got_q, ref_q) and torch.equal(got_k, ref_k)
    got32 = ops.mrope_rotary_embedding(positions.int(), q, k, cache, section)
    assert torch.equal(got32[0], ref_q)
