"""The fused rope + KV-cache write op (``mmcore::rotary_embedding_and_cache``) and the layer entry
point ``rotate_and_write_kv`` on CPU: both must equal rope followed by the cache write."""

from __future__ import annotations

import pytest
import torch

from mmcore.kernels import cpu, ops, reference
from mmcore.layers import attention
from mmcore.layers.attention import AttentionMetadata, rotate_and_write_kv, write_kv
from mmcore.layers.rotary import MRotaryEmbedding, RotaryEmbedding

NUM_BLOCKS, BLOCK_SIZE = 6, 4


def _cos_sin(d, max_positions, dtype):
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    return reference.rotary_cos_sin_cache(inv_freq, max_positions, 1.0, dtype)


def _inputs(num_tokens, hq, hk, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(num_tokens, h, d, generator=gen).to(dtype) for h in (hq, hk, hk))
    # Random (not zero) caches: a slot the op must skip keeps its old row.
    kc = torch.randn(NUM_BLOCKS, BLOCK_SIZE, hk, d, generator=gen).to(dtype)
    vc = torch.randn(NUM_BLOCKS, BLOCK_SIZE, hk, d, generator=gen).to(dtype)
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE, generator=gen)[:num_tokens]
    slots[::3] = -1  # skipped tokens (padding)
    return q, k, v, kc, vc, slots


def _two_op(positions, q, k, v, cos_sin, kc, vc, slots, section=None):
    if section is None:
        q_ref, k_ref = reference.rotary_embedding(positions, q, k, cos_sin)
    else:
        q_ref, k_ref = reference.mrope_rotary_embedding(positions, q, k, cos_sin, section)
    reference.reshape_and_cache(k_ref, v, kc, vc, slots)
    return q_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d,hq,hk", [(16, 4, 2), (64, 4, 4)])
def test_fused_op_equals_rope_then_cache_write(dtype, d, hq, hk):
    q, k, v, kc, vc, slots = _inputs(9, hq, hk, d, dtype, seed=d + hq)
    cos_sin = _cos_sin(d, 128, dtype)
    positions = torch.randint(0, 128, (9,), generator=torch.Generator().manual_seed(1))
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = _two_op(positions, q, k, v, cos_sin, kc_ref, vc_ref, slots)
    q_out = ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, kc, vc, slots)
    assert torch.equal(q_out, q_ref)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    # The keys went in rotated, the values as they are, and skipped slots kept their rows.
    written = slots >= 0
    rows = slots[written]
    k_rot = reference.rotary_embedding(positions, q, k, cos_sin)[1]
    assert torch.equal(kc[rows // BLOCK_SIZE, rows % BLOCK_SIZE], k_rot[written])
    assert torch.equal(vc[rows // BLOCK_SIZE, rows % BLOCK_SIZE], v[written])
    assert not torch.equal(k_rot[written], k[written])


def test_fused_op_mrope_equals_rope_then_cache_write():
    d, section = 32, [4, 6, 6]
    q, k, v, kc, vc, slots = _inputs(7, 4, 2, d, torch.bfloat16, seed=3)
    cos_sin = _cos_sin(d, 64, torch.bfloat16)
    positions = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(2))
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = _two_op(positions, q, k, v, cos_sin, kc_ref, vc_ref, slots, section)
    q_out = ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, kc, vc, slots, section)
    assert torch.equal(q_out, q_ref)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    # The three rows differ, so plain rope would give other keys.
    plain_k = reference.rotary_embedding(positions[0], q, k, cos_sin)[1]
    rows = slots[slots >= 0]
    assert not torch.equal(kc[rows // BLOCK_SIZE, rows % BLOCK_SIZE], plain_k[slots >= 0])


def test_fused_op_traces_and_has_a_fake():
    q, k, v, kc, vc, slots = _inputs(5, 4, 2, 16, torch.bfloat16)
    cos_sin = _cos_sin(16, 32, torch.bfloat16)
    positions = torch.arange(5)
    torch.library.opcheck(
        torch.ops.mmcore.rotary_embedding_and_cache,
        (positions, q, k, v, cos_sin, kc, vc, slots, None),
    )
    torch.library.opcheck(
        torch.ops.mmcore.rotary_embedding_and_cache,
        (positions.expand(3, 5), q, k, v, cos_sin, kc, vc, slots, [2, 3, 3]),
    )


def test_fused_op_compiles_fullgraph():
    q, k, v, kc, vc, slots = _inputs(5, 4, 2, 16, torch.bfloat16, seed=8)
    cos_sin = _cos_sin(16, 32, torch.bfloat16)
    positions = torch.arange(5)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = _two_op(positions, q, k, v, cos_sin, kc_ref, vc_ref, slots)

    def step(kc, vc):
        return ops.rotary_embedding_and_cache(positions, q, k, v, cos_sin, kc, vc, slots) * 1

    q_out = torch.compile(step, backend="aot_eager", fullgraph=True)(kc, vc)
    assert torch.equal(q_out, q_ref)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


def _fp8_cache():
    kc = torch.zeros(NUM_BLOCKS, BLOCK_SIZE, 2, 16, dtype=torch.float8_e4m3fn)
    return kc, kc.clone()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(key_cache=_fp8_cache()[0], value_cache=_fp8_cache()[1]), "FP8"),
        (lambda a: a.update(slot_mapping=a["slot_mapping"][:-1]), "slot_mapping"),
        (lambda a: a.update(value=a["value"][:, :1]), "key/value"),
        (lambda a: a.update(key_cache=a["key_cache"][..., :8]), "do not fit"),
        (lambda a: a.update(mrope_section=[2, 2, 2]), "positions"),
        (lambda a: a.update(positions=a["positions"].expand(3, 5), mrope_section=[1, 1, 1]), "sum"),
    ],
)
def test_fused_op_rejects_bad_arguments(change, match):
    q, k, v, kc, vc, slots = _inputs(5, 4, 2, 16, torch.bfloat16)
    args = dict(
        positions=torch.arange(5), query=q, key=k, value=v,
        cos_sin_cache=_cos_sin(16, 32, torch.bfloat16), key_cache=kc, value_cache=vc,
        slot_mapping=slots,
    )  # fmt: skip
    change(args)
    with pytest.raises(ValueError, match=match):
        ops.rotary_embedding_and_cache(**args)


class _Config:
    rope_theta = 10000.0
    max_position_embeddings = 64
    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}


def _attn(slots):
    t = slots.shape[0]
    return AttentionMetadata(
        slot_mapping=slots,
        block_tables=torch.zeros(1, 1, dtype=torch.int32),
        seq_lens=torch.tensor([t], dtype=torch.int32),
        query_start_loc=torch.tensor([0, t], dtype=torch.int32),
        max_seq_len=t,
        max_query_len=t,
    )


@pytest.mark.parametrize("mrope", [False, True])
def test_rotate_and_write_kv_on_cpu_is_rope_then_write_kv(mrope, monkeypatch):
    """On CPU the layer entry point takes the two-op path (the batched CPU cache write)."""
    q, k, v, kc, vc, slots = _inputs(6, 4, 2, 16, torch.bfloat16, seed=5)
    if mrope:
        config = _Config()
        config.rope_parameters = {**config.rope_parameters, "mrope_section": [2, 3, 3]}
        rotary = MRotaryEmbedding(config, 16, device=torch.device("cpu"), dtype=torch.bfloat16)
        positions = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(4))
    else:
        rotary = RotaryEmbedding(_Config(), 16, device=torch.device("cpu"), dtype=torch.bfloat16)
        positions = torch.randint(0, 64, (6,), generator=torch.Generator().manual_seed(4))
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref, k_ref = rotary(positions, q, k)
    write_kv(k_ref, v, (kc_ref, vc_ref), _attn(slots))

    calls = []
    monkeypatch.setattr(cpu, "reshape_and_cache", _spy(cpu.reshape_and_cache, calls))
    q_out = rotate_and_write_kv(rotary, positions, q, k, v, (kc, vc), _attn(slots))
    assert calls, "the CPU path should write through the CPU cache write"
    assert torch.equal(q_out, q_ref)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    # The fused op (the CUDA path's op, here its reference) writes the same caches.
    kc2, vc2 = kc_ref.clone().normal_(), vc_ref.clone().normal_()
    kc3, vc3 = kc2.clone(), vc2.clone()
    q_fused = rotary.rotate_and_cache(positions, q, k, v, kc2, vc2, slots)
    rotate_and_write_kv(rotary, positions, q, k, v, (kc3, vc3), _attn(slots))
    assert torch.equal(q_fused, q_ref)
    assert torch.equal(kc2, kc3) and torch.equal(vc2, vc3)


def test_rotate_and_write_kv_fp8_cache_on_cpu_quantises_with_scales():
    q, k, v, _, _, slots = _inputs(6, 4, 2, 16, torch.bfloat16, seed=6)
    rotary = RotaryEmbedding(_Config(), 16, device=torch.device("cpu"), dtype=torch.bfloat16)
    positions = torch.arange(6)
    kc, vc = _fp8_cache()
    scales = torch.full((2,), 0.5), torch.full((2,), 0.25)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref, k_ref = rotary(positions, q, k)
    reference.reshape_and_cache(k_ref, v, kc_ref, vc_ref, slots, *scales)
    q_out = rotate_and_write_kv(rotary, positions, q, k, v, (kc, vc, *scales), _attn(slots))
    assert torch.equal(q_out, q_ref)
    assert torch.equal(kc.view(torch.uint8), kc_ref.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), vc_ref.view(torch.uint8))


def test_rotate_and_write_kv_takes_the_fused_op_when_the_kernel_applies(monkeypatch):
    """The dispatch: with the kernel applicable (faked here) the fused op runs, not the two."""
    q, k, v, kc, vc, slots = _inputs(6, 4, 2, 16, torch.bfloat16, seed=7)
    rotary = RotaryEmbedding(_Config(), 16, device=torch.device("cpu"), dtype=torch.bfloat16)
    positions = torch.arange(6)
    applies = []

    class _Ops:
        @staticmethod
        def rope_cache_kernel_applies(*tensors):
            applies.append(tensors)
            return True

    fused_calls, write_calls = [], []
    monkeypatch.setattr(attention, "_cuda_ops", lambda: _Ops)
    fused = _spy(reference.rotary_embedding_and_cache, fused_calls)
    monkeypatch.setattr(reference, "rotary_embedding_and_cache", fused)
    monkeypatch.setattr(cpu, "reshape_and_cache", _spy(cpu.reshape_and_cache, write_calls))
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_out = rotate_and_write_kv(rotary, positions, q, k, v, (kc, vc), _attn(slots))
    assert len(applies) == 1 and applies[0][3] is rotary.cos_sin_cache
    assert len(fused_calls) == 1 and not write_calls
    q_ref = _two_op(positions, q, k, v, rotary.cos_sin_cache, kc_ref, vc_ref, slots)
    assert torch.equal(q_out, q_ref)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    # An FP8 cache never asks the kernel: the two ops quantise with the scales.
    fp8 = (*_fp8_cache(), torch.ones(2), torch.ones(2))
    rotate_and_write_kv(rotary, positions, q, k, v, fp8, _attn(slots))
    assert len(applies) == 1 and len(fused_calls) == 1


def _spy(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(args)
        return fn(*args, **kwargs)

    return wrapped


def test_fused_kernel_only_takes_block_token_head_caches():
    # The kernel addresses [blocks, block_size, Hkv, D] caches; another layout (here an
    # [blocks, Hkv, block_size, D] buffer viewed token-major) must take the two-op path.
    from mmcore.kernels.fused_ops import _block_token_head_layout

    cache = torch.zeros(6, 16, 4, 64)
    assert _block_token_head_layout(cache)
    assert not _block_token_head_layout(torch.zeros(6, 4, 16, 64).transpose(1, 2))
    assert not _block_token_head_layout(torch.zeros(6, 16, 64, 4).transpose(2, 3))
    assert not _block_token_head_layout(torch.zeros(6, 16, 4 * 64))
