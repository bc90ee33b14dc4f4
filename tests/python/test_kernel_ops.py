"""The mmcore custom ops on CPU: reference dispatch, fake shapes, argument validation."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mmcore
from mmcore.kernels import ops, reference


def _paged_inputs(gen, dtype=torch.float32):
    hq, hkv, d, bs = 4, 2, 16, 4
    key_cache = torch.randn(10, bs, hkv, d, generator=gen).to(dtype)
    value_cache = torch.randn(10, bs, hkv, d, generator=gen).to(dtype)
    tables = torch.tensor([[3, 7, 1], [0, 9, -1]], dtype=torch.int32)
    seq_lens = torch.tensor([11, 6], dtype=torch.int32)
    starts = torch.tensor([0, 5, 6], dtype=torch.int32)
    query = torch.randn(6, hq, d, generator=gen).to(dtype)
    return query, key_cache, value_cache, tables, seq_lens, starts


def test_has_cuda_kernels_matches_module_presence():
    built = importlib.util.find_spec("mmcore._kernels") is not None
    assert mmcore.has_cuda_kernels() == built
    if built:
        from mmcore import _kernels

        assert _kernels.device_count() >= 0


def test_ops_are_registered():
    for name in ("reshape_and_cache", "paged_attention", "varlen_attention"):
        assert hasattr(torch.ops.mmcore, name)


def test_paged_attention_cpu_dispatches_to_reference():
    gen = torch.Generator().manual_seed(0)
    args = _paged_inputs(gen)
    for window in (-1, 3):
        out = ops.paged_attention(*args, 0.3, sliding_window=window)
        torch.testing.assert_close(out, reference.paged_attention(*args, 0.3, window))


def test_varlen_attention_cpu_dispatches_to_reference():
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 9, 2, 8, generator=gen).unbind(0)
    cu = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
    out = ops.varlen_attention(q, k, v, cu, 0.5)
    torch.testing.assert_close(out, reference.varlen_attention(q, k, v, cu, 0.5))


def test_reshape_and_cache_cpu_mutates_caches_like_reference():
    gen = torch.Generator().manual_seed(2)
    key, value = torch.randn(2, 5, 2, 8, generator=gen).unbind(0)
    caches = [torch.zeros(3, 4, 2, 8) for _ in range(2)]
    expect = [torch.zeros(3, 4, 2, 8) for _ in range(2)]
    slots = torch.tensor([0, -1, 5, 11, 2])
    ops.reshape_and_cache(key, value, *caches, slots)
    reference.reshape_and_cache(key, value, *expect, slots)
    assert torch.equal(caches[0], expect[0]) and torch.equal(caches[1], expect[1])
    assert caches[0][0, 1].abs().sum() == 0  # the skipped token (slot -1) wrote nothing


def test_fake_impls_give_output_shapes():
    gen = torch.Generator().manual_seed(3)
    real = _paged_inputs(gen, torch.bfloat16)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in real]
        out = torch.ops.mmcore.paged_attention(*fake, 0.2, -1, 5, 11)
        assert out.shape == real[0].shape and out.dtype == torch.bfloat16
        q = mode.from_tensor(torch.randn(7, 3, 16))
        cu = mode.from_tensor(torch.tensor([0, 7], dtype=torch.int32))
        assert torch.ops.mmcore.varlen_attention(q, q, q, cu, 1.0).shape == (7, 3, 16)
        torch.ops.mmcore.reshape_and_cache(fake[1][0], fake[1][0], fake[1], fake[2],
                                           mode.from_tensor(torch.zeros(4, dtype=torch.long)))  # fmt: skip


def test_paged_attention_op_passes_attend_until_and_fp8_scales():
    gen = torch.Generator().manual_seed(6)
    query, key_cache, value_cache, *rest = _paged_inputs(gen)
    until = torch.tensor([-1, 9, 9, -1, -1, -1], dtype=torch.int32)  # request 0: a 2-token span
    args = (query, key_cache, value_cache, *rest)
    out = ops.paged_attention(*args, 0.3, -1, until)
    torch.testing.assert_close(out, reference.paged_attention(*args, 0.3, -1, until))
    assert not torch.allclose(out[1:3], reference.paged_attention(*args, 0.3)[1:3])
    scales = {"k_scale": torch.tensor([0.5, 2.0]), "v_scale": torch.tensor([1.0, 0.25])}
    fp8 = [c.to(torch.float8_e4m3fn) for c in (key_cache, value_cache)]
    fp8_args = (query, *fp8, *rest)
    out = ops.paged_attention(*fp8_args, 0.3, 2, until, **scales)
    want = reference.paged_attention(*fp8_args, 0.3, 2, until, **scales)
    torch.testing.assert_close(out, want)
    with pytest.raises(ValueError, match=r"attend_until must be \[T\]"):
        ops.paged_attention(*args, 0.3, -1, until[:3])


def test_fake_impl_takes_attend_until_and_scales():
    real = _paged_inputs(torch.Generator().manual_seed(7), torch.bfloat16)
    until = torch.zeros(6, dtype=torch.int32)
    scale = torch.ones(2)
    caches = [real[i].to(torch.float8_e4m3fn) for i in (1, 2)]
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (*real, until, scale)]
        fp8 = [mode.from_tensor(c) for c in caches]
        out = torch.ops.mmcore.paged_attention(
            fake[0], *fp8, *fake[3:6], 0.2, -1, 5, 11, fake[6], fake[7], fake[7]
        )
        assert out.shape == real[0].shape and out.dtype == torch.bfloat16


def test_ops_trace_under_torch_compile():
    gen = torch.Generator().manual_seed(4)
    args = _paged_inputs(gen)

    def step(*a):
        return ops.paged_attention(*a, 0.25, max_query_len=5, max_seq_len=11) * 2

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), 2 * reference.paged_attention(*args, 0.25))
    until = torch.tensor([-1, 10, 10, 10, -1, -1], dtype=torch.int32)

    def spans(*a):
        return ops.paged_attention(*a, 0.25, -1, until, max_query_len=5, max_seq_len=11)

    compiled = torch.compile(spans, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), reference.paged_attention(*args, 0.25, -1, until))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: (a[0][..., :8], *a[1:]), "head dim"),
        (lambda a: (a[0][:, :3], *a[1:]), "not a multiple"),
        (lambda a: (*a[:5], a[5][:-1]), "query_start_loc"),
        (lambda a: (a[0], a[1][0], *a[2:]), "expected query"),
    ],
)
def test_paged_attention_rejects_bad_shapes(mutate, match):
    args = mutate(_paged_inputs(torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match=match):
        ops.paged_attention(*args, 0.1)


def test_varlen_and_cache_write_reject_bad_shapes():
    q = torch.randn(5, 2, 8)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match="same number of heads"):
        ops.varlen_attention(q, q[:, :1], q[:, :1], cu, 1.0)
    with pytest.raises(ValueError, match="does not match"):
        ops.varlen_attention(q, q[:4], q[:4], cu, 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        ops.reshape_and_cache(q, q, torch.zeros(2, 4, 3, 8), torch.zeros(2, 4, 3, 8),
                              torch.zeros(5, dtype=torch.long))  # fmt: skip


def test_kernel_routing_raises_for_half_precision_head_dims_the_kernels_lack(monkeypatch):
    # As on a GPU with the module built: half precision goes to the kernels or raises, float32
    # (a debugging path) and FP8 caches of a supported head dim are taken.
    monkeypatch.setattr(ops, "_use_kernel", lambda t: True)
    q = torch.zeros(3, 4, 96, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="no CUDA attention kernel for head dim 96"):
        ops._kernel_or_reference("varlen_attention", q, q, q)
    assert not ops._kernel_or_reference("varlen_attention", q.float(), q.float(), q.float())
    for d in ops.ATTENTION_HEAD_DIMS:
        q = torch.zeros(3, 4, d, dtype=torch.float16)
        fp8 = torch.zeros(2, 16, 4, d, dtype=torch.float8_e4m3fn)
        assert ops._kernel_or_reference("paged_attention", q, fp8, fp8)
    with pytest.raises(ValueError, match="does not match the query"):
        ops._kernel_or_reference("varlen_attention", q, fp8[0], fp8[0])


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0),
    reason="on Hopper the kernel is selected (test_attention_sm90_cuda.py checks that)",
)
def test_hopper_attention_is_not_selected_without_a_hopper_gpu():
    # No compute-capability 9.0 device (or no kernels module): prefill keeps the other paths.
    for head_dim in (64, 128, 80):
        assert ops.hopper_attention_selected(head_dim) is False
        assert ops.hopper_attention_selected(head_dim, kv_fp8=True) is False
    with ops.hopper_attention(True):
        assert ops.hopper_attention_selected(128) is False
    with ops.hopper_attention(False):
        assert ops.hopper_attention_selected(128) is False
