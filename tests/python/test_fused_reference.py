"""The fused elementwise references equal HF transformers' Llama modules bit for bit, and the
mmcore fused ops on CPU tensors dispatch to them (plus fake shapes, compile, argument checks)."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from mmcore.kernels import fused_ops, ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _config(**overrides) -> LlamaConfig:
    fields = dict(
        hidden_size=96, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
        head_dim=24, max_position_embeddings=256, hidden_act="silu", rms_norm_eps=1e-5,
    )  # fmt: skip
    fields.update(overrides)
    return LlamaConfig(**fields)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [8, 96, 4096])
def test_rms_norm_equals_llama_rms_norm(dtype, hidden):
    g = torch.Generator().manual_seed(hidden)
    norm = LlamaRMSNorm(hidden, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden, generator=g))
        x = (3 * torch.randn(7, hidden, generator=g)).to(dtype)
        assert torch.equal(reference.rms_norm(x, norm.weight, 1e-6), norm(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_equals_llama_residual_then_norm(dtype):
    g = torch.Generator().manual_seed(1)
    norm = LlamaRMSNorm(96, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96, generator=g))
        residual, attn_out = (torch.randn(2, 5, 96, generator=g) * 4).to(dtype).unbind(0)
        hidden = residual + attn_out  # LlamaDecoderLayer: hidden_states = residual + hidden_states
        normed, summed = reference.fused_add_rms_norm(attn_out, residual, norm.weight, 1e-5)
        assert torch.equal(summed, hidden) and torch.equal(normed, norm(hidden))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul_equals_llama_mlp(dtype):
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    mlp = LlamaMLP(_config()).to(dtype)
    with torch.no_grad():
        x = torch.randn(9, 96, generator=g).to(dtype)
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
        fused = torch.cat((gate, up), dim=-1)
        act = reference.silu_and_mul(fused)
        assert torch.equal(act, mlp.act_fn(gate) * up)
        assert torch.equal(mlp.down_proj(act), mlp(x))


ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 64},
}  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rope", sorted(ROPES))
@pytest.mark.parametrize("head_dim,hq,hk", [(24, 4, 2), (64, 4, 4), (80, 6, 1)])
def test_rotary_embedding_equals_llama_rope(dtype, rope, head_dim, hq, hk):
    config = _config(head_dim=head_dim, num_attention_heads=hq, num_key_value_heads=hk,
                     rope_parameters=ROPES[rope])  # fmt: skip
    rotary = LlamaRotaryEmbedding(config)
    g = torch.Generator().manual_seed(head_dim + hq)
    num_tokens = 11
    positions = torch.randperm(config.max_position_embeddings, generator=g)[:num_tokens]
    q = torch.randn(num_tokens, hq, head_dim, generator=g).to(dtype)
    k = torch.randn(num_tokens, hk, head_dim, generator=g).to(dtype)
    cos, sin = rotary(q, positions[None])  # [1, T, D]
    # HF layout: [batch, heads, tokens, head_dim]
    q_hf, k_hf = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    cache = reference.rotary_cos_sin_cache(
        rotary.inv_freq, config.max_position_embeddings, rotary.attention_scaling, dtype
    )
    q_ref, k_ref = reference.rotary_embedding(positions, q, k, cache)
    assert torch.equal(q_ref, q_hf[0].transpose(0, 1))
    assert torch.equal(k_ref, k_hf[0].transpose(0, 1))


# ------------------------------------------------------------------ the ops on CPU tensors


def _qkv(gen, num_tokens, hq, hk, d, dtype):
    """q and k as strided views of a fused qkv projection output ``[T, (hq + 2 hk) * d]``."""
    qkv = torch.randn(num_tokens, (hq + 2 * hk) * d, generator=gen).to(dtype)
    q = qkv[:, : hq * d].view(num_tokens, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(num_tokens, hk, d)
    return q, k


@pytest.mark.parametrize("dtype", DTYPES)
def test_ops_on_cpu_equal_reference(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, 40, generator=g).to(dtype)  # 3-D rows
    res = torch.randn(6, 2, 40, generator=g).to(dtype)
    w = torch.randn(40, generator=g).to(dtype)
    assert torch.equal(ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))
    rows = torch.randn(9, 40, generator=g).to(dtype)[::2]  # strided rows
    assert torch.equal(ops.rms_norm(rows, w, 1e-6), reference.rms_norm(rows, w, 1e-6))
    for got, want in zip(ops.fused_add_rms_norm(x, res, w, 1e-5),
                         reference.fused_add_rms_norm(x, res, w, 1e-5)):  # fmt: skip
        assert torch.equal(got, want)
    gate_up = torch.randn(5, 2 * 50, generator=g).to(dtype)
    assert torch.equal(ops.silu_and_mul(gate_up), reference.silu_and_mul(gate_up))
    q, k = _qkv(g, 7, 4, 2, 16, dtype)
    cache = reference.rotary_cos_sin_cache(torch.rand(8, generator=g), 32, 1.0, dtype)
    pos = torch.tensor([5, 0, 31, 2, 2, 17, 9], dtype=torch.int32)
    for got, want in zip(ops.rotary_embedding(pos, q, k, cache),
                         reference.rotary_embedding(pos, q, k, cache)):  # fmt: skip
        assert torch.equal(got, want)


def test_fused_ops_do_not_mutate_inputs():
    g = torch.Generator().manual_seed(4)
    x, res = torch.randn(2, 3, 16, generator=g).unbind(0)
    before = (x.clone(), res.clone())
    ops.fused_add_rms_norm(x, res, torch.ones(16), 1e-6)
    assert torch.equal(x, before[0]) and torch.equal(res, before[1])


def test_fused_ops_are_registered_and_found_by_select_op():
    from mmcore.layers import attention

    for name in ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary_embedding"):
        assert hasattr(torch.ops.mmcore, name)
        assert getattr(ops, name) is getattr(fused_ops, name)
        assert attention.select_op(name, torch.zeros(1)) is getattr(reference, name)


def test_fake_impls_give_output_shapes_and_dtypes():
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.zeros(5, 64, dtype=torch.bfloat16))
        w = mode.from_tensor(torch.zeros(64, dtype=torch.bfloat16))
        w32 = mode.from_tensor(torch.zeros(64))
        assert torch.ops.mmcore.rms_norm(x, w, 1e-6).dtype == torch.bfloat16
        assert torch.ops.mmcore.rms_norm(x, w32, 1e-6).dtype == torch.float32  # promotes
        normed, summed = torch.ops.mmcore.fused_add_rms_norm(x, x, w, 1e-6)
        assert normed.shape == summed.shape == (5, 64)
        assert torch.ops.mmcore.silu_and_mul(x).shape == (5, 32)
        q = mode.from_tensor(torch.zeros(5, 4, 16, dtype=torch.float16))
        k = mode.from_tensor(torch.zeros(5, 2, 16, dtype=torch.float16))
        cache = mode.from_tensor(torch.zeros(40, 16, dtype=torch.float16))
        pos = mode.from_tensor(torch.zeros(5, dtype=torch.long))
        q_out, k_out = torch.ops.mmcore.rotary_embedding(pos, q, k, cache)
        assert q_out.shape == (5, 4, 16) and k_out.shape == (5, 2, 16)


def test_fused_ops_trace_under_torch_compile():
    g = torch.Generator().manual_seed(5)
    x, res = torch.randn(2, 4, 32, generator=g).unbind(0)
    w = torch.randn(32, generator=g)
    q, k = _qkv(g, 4, 2, 1, 8, torch.float32)
    cache = reference.rotary_cos_sin_cache(torch.rand(4, generator=g), 16, 1.0, torch.float32)
    pos = torch.tensor([3, 1, 2, 0])

    def layer(x, res, q, k):
        normed, summed = ops.fused_add_rms_norm(x, res, w, 1e-6)
        q, k = ops.rotary_embedding(pos, q, k, cache)
        return ops.silu_and_mul(ops.rms_norm(normed, w, 1e-6)), summed, q, k

    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    for got, want in zip(compiled(x, res, q, k), layer(x, res, q, k)):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.rms_norm(torch.zeros(3, 8), torch.zeros(7), 1e-6), "weight"),
        (lambda: ops.rms_norm(torch.zeros(3, 8), torch.zeros(1, 8), 1e-6), "weight"),
        (lambda: ops.rms_norm(torch.zeros(3, 8, dtype=torch.int32), torch.zeros(8), 1e-6),
         "floating"),
        (lambda: ops.rms_norm(torch.zeros(3, 0), torch.zeros(0), 1e-6), "positive"),
        (lambda: ops.fused_add_rms_norm(torch.zeros(3, 8), torch.zeros(2, 8), torch.zeros(8),
                                        1e-6), "residual"),
        (lambda: ops.silu_and_mul(torch.zeros(3, 7)), "even"),
        (lambda: ops.silu_and_mul(torch.zeros(3, 8, dtype=torch.long)), "floating"),
        (lambda: ops.rotary_embedding(torch.zeros(3, dtype=torch.long), torch.zeros(3, 8),
                                      torch.zeros(3, 1, 8), torch.zeros(4, 8)), "expected query"),
        (lambda: ops.rotary_embedding(torch.zeros(3, dtype=torch.long), torch.zeros(3, 2, 8),
                                      torch.zeros(3, 1, 6), torch.zeros(4, 8)), "does not match"),
        (lambda: ops.rotary_embedding(torch.zeros(3, dtype=torch.long), torch.zeros(3, 2, 7),
                                      torch.zeros(3, 1, 7), torch.zeros(4, 7)), "even"),
        (lambda: ops.rotary_embedding(torch.zeros(3), torch.zeros(3, 2, 8),
                                      torch.zeros(3, 1, 8), torch.zeros(4, 8)), "positions"),
        (lambda: ops.rotary_embedding(torch.zeros(2, dtype=torch.long), torch.zeros(3, 2, 8),
                                      torch.zeros(3, 1, 8), torch.zeros(4, 8)), "positions"),
        (lambda: ops.rotary_embedding(torch.zeros(3, dtype=torch.long), torch.zeros(3, 2, 8),
                                      torch.zeros(3, 1, 8), torch.zeros(4, 16)), "cos_sin_cache"),
    ],
)  # fmt: skip
def test_wrappers_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------- launcher checks of the built module (no GPU needed)


def _module():
    module = fused_ops._kernels()
    if module is None:
        pytest.skip("mmcore._kernels is not built")
    return module


def test_launchers_validate_arguments_before_touching_the_device():
    k = _module()
    norm = dict(x=0, x_stride=8, weight=0, out=0, out_stride=8, num_tokens=0, hidden=8,
                eps=1e-6, dtype=2, stream=0)  # fmt: skip
    k.rms_norm(**norm)  # no rows: nothing to launch
    for bad, match in [({"hidden": 0}, "hidden"), ({"dtype": 7}, "dtype"),
                       ({"out_stride": 4}, "stride"), ({"eps": float("nan")}, "eps"),
                       ({"num_tokens": 2}, "null")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            k.rms_norm(**{**norm, **bad})
    act = dict(x=0, x_stride=16, out=0, out_stride=8, num_tokens=0, intermediate=8, dtype=1,
               stream=0)  # fmt: skip
    k.silu_and_mul(**act)
    with pytest.raises(ValueError, match="intermediate"):
        k.silu_and_mul(**{**act, "intermediate": 0})
    rope = dict(positions=0, positions_int64=True, query=0, q_strides=(64, 16), key=0,
                k_strides=(64, 16), query_out=0, qo_strides=(64, 16), key_out=0,
                ko_strides=(16, 16), cos_sin_cache=0, cache_stride=16, max_positions=4,
                num_tokens=0, num_q_heads=4, num_kv_heads=1, head_dim=16, dtype=2, stream=0)  # fmt: skip
    k.rotary_embedding(**rope)
    for bad, match in [({"head_dim": 15}, "even"), ({"ko_strides": (8, 16)}, "overlap"),
                       ({"max_positions": 0}, "cos_sin_cache"), ({"num_tokens": 1}, "null")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            k.rotary_embedding(**{**rope, **bad})
