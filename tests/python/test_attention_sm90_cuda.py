"""The Hopper (sm90a, wgmma) prefill / packed attention kernel against the torch reference and
against the sm80 kernel it replaces there (needs a compute-capability 9.0 GPU and
mmcore._kernels built for 90a with the CUTLASS headers).

Shapes are chosen around its tiles: 128 query rows (tokens x GQA group) and 128 keys (48 at
head dim 256), so ragged lengths at 127 / 128 / 129 and 47 / 48 / 49, groups that pack 16 tokens
into a row tile, chunks over a cached prefix whose first query is not tile-aligned,
non-power-of-two cache blocks, cache blocks on both K/V paths (TMA and cp.async) at every head
dim, windows and image spans, head dims of both shared-memory swizzles. Tolerances: those of
test_kernels_cuda.py.
"""

from __future__ import annotations

import pytest
import torch

from mmcore.kernels import ops, reference
from mmcore.testing.attention_batches import (
    random_packed_qkv,
    random_paged_batch,
    replay_in_cuda_graph,
    span_bounds,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
        reason="needs a compute-capability 9.0 (Hopper) GPU",
    ),
]


@pytest.fixture(autouse=True)
def _unsplit_launches(monkeypatch):
    # Small prefill launches split their keys over CTAs to fill the GPU, and split launches keep
    # the sm80 kernel: with no splits, every prefill case here runs the Hopper kernel.
    monkeypatch.setattr(ops, "SPLIT_MIN_KEY_TILES", 1 << 20)


def test_small_prefill_launches_run_unsplit_here():
    # What the fixture buys: a small launch (636 tokens, 2 KV heads) the planner would split.
    kernels = ops._kernels()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    case = (4, 636, 8, 2, 2, 300, 1000, sms, 128)
    assert kernels.paged_launch_plan(*case, 1)[1] > 1  # the engine's setting: split
    assert kernels.paged_launch_plan(*case, ops.SPLIT_MIN_KEY_TILES)[1] == 1


TOL = {torch.bfloat16: 2e-2, torch.float16: 1e-2}
# 64 / 128: 128-byte swizzled rows; 80 (Qwen2.5-VL's ViT): 32-byte swizzle; 72 (SigLIP's ViT):
# computed as 80 with zero columns past the head dim; 256 (Gemma 3): 48-key K/V tiles.
DIMS = [64, 72, 80, 128, 256]
DTYPES = [torch.bfloat16, torch.float16]
_dtype_id = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get

# name -> (seq_lens, num_queries, hq, hkv, block_size)
PAGED_CASES = {
    "ragged": ([1, 17, 127, 128, 129, 300, 1000], [1, 17, 127, 128, 129, 300, 1000], 8, 8, 16),
    "group8": ([2100, 77], [2100, 77], 32, 4, 16),
    "chunk_over_prefix": ([530, 4097, 1300], [130, 1000, 257], 16, 2, 16),
    "block24": ([700, 333], [700, 300], 8, 2, 24),
    "mqa": ([900], [900], 8, 1, 32),
    # Around head dim 256's 48-key tiles; 48-key blocks: one TMA box a tile there.
    "ragged48": ([47, 48, 49, 95, 96, 97, 145], [47, 48, 49, 60, 96, 1, 145], 8, 4, 16),
    "block48": ([500, 97], [400, 97], 8, 2, 48),
    "block8": ([300, 49], [250, 49], 8, 2, 8),
    # 7 query heads a KV head (Qwen2.5-7B) do not divide 128-row tiles: Q by cp.async, not TMA.
    "group7": ([900, 130], [700, 130], 28, 4, 16),
}


def _kv_tile_keys(d):
    return 48 if d > 128 else 128  # Sm90AttentionConfig::kBlockN


def _paged_tma(d, block_size):
    # make_sm90_kv_maps: one box a cache block, so blocks of >= 16 keys that divide the key tile.
    return block_size >= 16 and _kv_tile_keys(d) % block_size == 0


# (head dim, cache block size) pairs that take each paged K/V path: 16 divides both key tiles;
# 24 divides only 48 and 32 only 128.
PATHS = [(128, 16), (128, 24), (256, 24), (256, 32)]
PATH_IDS = [f"d{d}-{'tma' if _paged_tma(d, b) else 'cp_async'}{b}" for d, b in PATHS]


def _check_close(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out.float()).all()
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= TOL[dtype], f"max abs error {err}"


def test_hopper_kernel_is_selected_for_its_head_dims():
    assert all(ops.hopper_attention_selected(d) for d in DIMS)
    assert not any(map(ops.hopper_attention_selected, (16, 32)))  # these keep the sm80 kernel
    with ops.hopper_attention(False):
        assert not ops.hopper_attention_selected(128)
        with ops.hopper_attention(True):  # nested: each level restores what it found
            assert ops.hopper_attention_selected(128)
        assert not ops.hopper_attention_selected(128)
    assert ops.hopper_attention_selected(128)


# FP8 (e4m3) paged caches at head dims 64 (128-key tiles) and 128 (64-key tiles), converted to
# the query's dtype in shared memory. Tolerance: TOL, since the reference runs in float32 on the
# same caches dequantised, so only the kernel's 16-bit rounding of P and of the output remains.
FP8 = torch.float8_e4m3fn
FP8_DIMS = [64, 128]
# Factors on each KV head's cache scales (real K/V = stored value * scale): distinct per head and
# between K and V, so a kernel applying another head's scale, or K's to V, fails.
K_SCALE_FACTORS = [1.0, 1.6, 0.6, 1.3]
V_SCALE_FACTORS = [1.0, 0.55, 0.8, 0.3]


def _fp8_paged_batch(seq_lens, num_q, hq, hkv, d, block_size, dtype, seed):
    args, scales = random_paged_batch(
        seq_lens, num_q, hq, hkv, d, block_size, dtype, seed=seed, kv_dtype=FP8, qkv_slice=True
    )
    heads = torch.arange(hkv) % 4
    for name, factors in (("k_scale", K_SCALE_FACTORS), ("v_scale", V_SCALE_FACTORS)):
        scales[name] = scales[name] * torch.tensor(factors, device=scales[name].device)[heads]
    return args, scales


def test_hopper_kernel_takes_fp8_caches_at_64_and_128_only():
    assert all(ops.hopper_attention_selected(d, kv_fp8=True) for d in FP8_DIMS)
    assert not ops.hopper_attention_selected(80, kv_fp8=True)  # the sm80 kernel's FP8 path
    assert not ops.hopper_attention_selected(72, kv_fp8=True)
    with ops.hopper_attention(False):
        assert not ops.hopper_attention_selected(128, kv_fp8=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("d", FP8_DIMS, ids=lambda d: f"d{d}")
@pytest.mark.parametrize("case", list(PAGED_CASES))
def test_paged_prefill_fp8_cache_matches_reference_and_sm80_kernel(case, d, dtype):
    seq_lens, num_q, hq, hkv, block_size = PAGED_CASES[case]
    args, scales = _fp8_paged_batch(seq_lens, num_q, hq, hkv, d, block_size, dtype, d + len(case))
    scale = d**-0.5
    out = ops.paged_attention(*args, scale, **scales)
    _check_close(out, reference.paged_attention(*args, scale, **scales), dtype)
    with ops.hopper_attention(False):
        sm80 = ops.paged_attention(*args, scale, **scales)
    _check_close(out, sm80, dtype)


@pytest.mark.parametrize("block_size", [16, 24])
@pytest.mark.parametrize("d", FP8_DIMS, ids=lambda d: f"d{d}")
def test_fp8_cache_many_items_with_spans_and_windows(d, block_size):
    # Many uneven items a persistent CTA takes in turn (the staging buffers and stages wrap across
    # items), image spans, then a sliding window whose lower bound is not tile-aligned.
    gen = torch.Generator().manual_seed(d + block_size)
    seq_lens = torch.randint(1, 2000, (40,), generator=gen).tolist()
    num_q = [max(1, int(n * f)) for n, f in zip(seq_lens, torch.rand(40, generator=gen).tolist())]
    spans = [
        [(n - q, n - q + 40)] if i % 5 == 0 else [] for i, (n, q) in enumerate(zip(seq_lens, num_q))
    ]
    args, scales = _fp8_paged_batch(seq_lens, num_q, 16, 4, d, block_size, torch.bfloat16, d)
    until = span_bounds(seq_lens, num_q, spans)
    out = ops.paged_attention(*args, d**-0.5, -1, until, **scales)
    ref = reference.paged_attention(*args, d**-0.5, -1, until, **scales)
    _check_close(out, ref, torch.bfloat16)
    out = ops.paged_attention(*args, d**-0.5, sliding_window=100, **scales)
    ref = reference.paged_attention(*args, d**-0.5, 100, **scales)
    _check_close(out, ref, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"d{d}")
@pytest.mark.parametrize("case", list(PAGED_CASES))
def test_paged_prefill_matches_reference_and_sm80_kernel(case, d, dtype):
    seq_lens, num_q, hq, hkv, block_size = PAGED_CASES[case]
    args, _ = random_paged_batch(
        seq_lens, num_q, hq, hkv, d, block_size, dtype, seed=d + len(case), qkv_slice=True
    )
    scale = d**-0.5
    out = ops.paged_attention(*args, scale)
    _check_close(out, reference.paged_attention(*args, scale), dtype)
    with ops.hopper_attention(False):
        sm80 = ops.paged_attention(*args, scale)
    _check_close(out, sm80, dtype)


@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"d{d}")
@pytest.mark.parametrize("window", [1, 100, 300])
def test_sliding_window(d, window):
    args, _ = random_paged_batch([700, 2100, 90], [300, 400, 90], 16, 4, d, 16, torch.bfloat16)
    out = ops.paged_attention(*args, 0.1, sliding_window=window)
    _check_close(out, reference.paged_attention(*args, 0.1, window), torch.bfloat16)


@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"d{d}")
def test_image_spans_open_keys_past_the_diagonal(d):
    seq_lens, num_q = [300, 530], [300, 130]
    spans = [[(20, 150), (200, 290)], [(395, 420), (450, 470), (520, 600)]]
    args, _ = random_paged_batch(seq_lens, num_q, 8, 2, d, 16, torch.bfloat16, seed=5)
    until = span_bounds(seq_lens, num_q, spans)
    out = ops.paged_attention(*args, d**-0.5, -1, until)
    ref = reference.paged_attention(*args, d**-0.5, -1, until)
    _check_close(out, ref, torch.bfloat16)
    plain = reference.paged_attention(*args, d**-0.5)
    assert (plain.float() - ref.float()).abs().max() > 0.05  # the spans change the result


@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"d{d}")
def test_long_prefill_8k(d):
    args, _ = random_paged_batch([8192, 3000], [8192, 1000], 8, 2, d, 16, torch.bfloat16, seed=8)
    out = ops.paged_attention(*args, d**-0.5)
    _check_close(out, reference.paged_attention(*args, d**-0.5), torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"d{d}")
@pytest.mark.parametrize("lens", [[577] * 6, [1, 17, 64, 129, 1000], [4096]])
def test_varlen_matches_reference_and_sm80_kernel(dtype, d, lens):
    (q, k, v), cu = random_packed_qkv(lens, 16, d, dtype, seed=d + len(lens))
    out = ops.varlen_attention(q, k, v, cu, d**-0.5)
    _check_close(out, reference.varlen_attention(q, k, v, cu, d**-0.5), dtype)
    with ops.hopper_attention(False):
        sm80 = ops.varlen_attention(q, k, v, cu, d**-0.5)
    _check_close(out, sm80, dtype)


def test_prefill_replays_in_a_cuda_graph():
    args, _ = random_paged_batch([640, 300], [640, 44], 8, 2, 128, 16, torch.bfloat16, seed=3)
    ref = reference.paged_attention(*args, 0.125)

    def step(*a):
        return ops.paged_attention(*a, 0.125, max_query_len=640, max_seq_len=1024)

    out, _graph = replay_in_cuda_graph(step, args)
    _check_close(out, ref, torch.bfloat16)


@pytest.mark.parametrize(("d", "block_size"), PATHS, ids=PATH_IDS)
def test_released_blocks_before_the_window_are_never_read(d, block_size):
    # A hybrid (sliding-window) KV cache frees blocks that no query of the step can see: their
    # block-table entries are -1. Garbage (NaN) in those blocks must not reach the output.
    window, seq_lens, num_q = 100, [2100], [400]
    args, _ = random_paged_batch(seq_lens, num_q, 8, 2, d, block_size, torch.bfloat16, seed=9)
    query, key_cache, value_cache, tables, lens, starts = args
    first_visible = seq_lens[0] - num_q[0] - window + 1
    released = first_visible // block_size  # blocks wholly before every query's window
    for b in range(released):
        key_cache[tables[0, b]] = float("nan")
        value_cache[tables[0, b]] = float("nan")
    tables[0, :released] = -1
    out = ops.paged_attention(*args, 0.1, sliding_window=window)
    clean = [key_cache.nan_to_num(0.0), value_cache.nan_to_num(0.0)]
    ref = reference.paged_attention(query, *clean, tables, lens, starts, 0.1, window)
    _check_close(out, ref, torch.bfloat16)


# Non-finite values: NaN where the index is even, Inf where odd.
def _poison(t: torch.Tensor) -> None:
    if t.dtype == FP8:  # e4m3 has no Inf: its NaN byte throughout
        t.view(torch.uint8).fill_(0x7F)
        return
    pattern = torch.full(t.shape, float("nan"), dtype=t.dtype, device=t.device)
    pattern.view(-1)[1::2] = float("inf")
    t.copy_(pattern)  # in place: t may be a strided view


# Head dims x cache blocks on every paged K/V path (TMA where the block divides the key tile),
# blocks larger than a 48-key tile's rows past the end (head dim 256), and FP8 caches.
STALE_CASES = [
    (64, 16, None),
    (80, 16, None),
    (128, 16, None),
    (128, 32, None),
    (128, 24, None),
    (256, 16, None),
    (256, 24, None),
    (256, 48, None),
    (128, 16, FP8),
    (64, 32, FP8),
]


@pytest.mark.parametrize(
    ("d", "block_size", "kv_dtype"),
    STALE_CASES,
    ids=[f"d{d}-b{b}{'-fp8' if k else ''}" for d, b, k in STALE_CASES],
)
def test_non_finite_slots_past_a_sequence_end_never_reach_the_output(d, block_size, kv_dtype):
    # A sequence's last cache block is partly used: its slots past the end keep a former owner's
    # rows. A TMA box copies the block whole; NaN / Inf there must not reach P V (as 0 x Inf).
    # Several row tiles a sequence (causal), a chunk over a cached prefix and a decode-like row.
    seq_lens, num_q = [300, 1000, 77, 130], [300, 257, 77, 2]
    args, scales = random_paged_batch(
        seq_lens, num_q, 8, 2, d, block_size, torch.bfloat16, seed=11, kv_dtype=kv_dtype
    )
    query, key_cache, value_cache, tables, lens, starts = args
    clean = [key_cache.clone(), value_cache.clone()]
    poisoned = 0
    for s, n in enumerate(seq_lens):
        if n % block_size:
            block = int(tables[s, n // block_size])
            _poison(key_cache[block, n % block_size :])
            _poison(value_cache[block, n % block_size :])
            poisoned += 1
    assert poisoned >= 3
    ref = reference.paged_attention(query, *clean, tables, lens, starts, d**-0.5, **scales)
    _check_close(ops.paged_attention(*args, d**-0.5, **scales), ref, torch.bfloat16)
    with ops.hopper_attention(False):
        _check_close(ops.paged_attention(*args, d**-0.5, **scales), ref, torch.bfloat16)


@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"d{d}")
def test_packed_sequences_never_read_their_neighbours_rows(d):
    # A packed K/V tile of a sequence's last keys reaches into the next sequence's rows (577 =
    # 4 x 128 + 65; 577 = 12 x 48 + 1). Non-finite values there must not reach its outputs.
    lens = [577, 300, 129]
    (q, k, v), cu = random_packed_qkv(lens, 16, d, torch.bfloat16, seed=d + 3)
    ref = reference.varlen_attention(q, k.clone(), v.clone(), cu, d**-0.5)
    _poison(k[577:877])
    _poison(v[577:877])
    keep = torch.ones(sum(lens), dtype=torch.bool, device=q.device)
    keep[577:877] = False  # the poisoned sequence's own outputs are NaN, as in the reference
    for hopper in (True, False):
        with ops.hopper_attention(hopper):
            out = ops.varlen_attention(q, k, v, cu, d**-0.5)
        _check_close(out[keep], ref[keep], torch.bfloat16)


@pytest.mark.parametrize("tma", [True, False], ids=["tma", "cp_async"])
@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"d{d}")
def test_persistent_ctas_run_many_uneven_items_in_turn(d, tma):
    # Far more (row tile, KV head) items than a 132-SM grid, of very uneven cost (1 to 16 key
    # tiles; 42 at head dim 256), some with image spans: each persistent CTA takes many items in turn, its K/V and Q
    # stages wrapping around across items of different lengths.
    block_size = next(b for b in (16, 24, 32) if _paged_tma(d, b) == tma)
    gen = torch.Generator().manual_seed(d + block_size)
    seq_lens = torch.randint(1, 2000, (48,), generator=gen).tolist()
    num_q = [max(1, int(n * f)) for n, f in zip(seq_lens, torch.rand(48, generator=gen).tolist())]
    spans = [
        [(n - q, n - q + 40)] if i % 5 == 0 else [] for i, (n, q) in enumerate(zip(seq_lens, num_q))
    ]
    args, _ = random_paged_batch(seq_lens, num_q, 16, 4, d, block_size, torch.bfloat16, seed=d)
    until = span_bounds(seq_lens, num_q, spans)
    out = ops.paged_attention(*args, d**-0.5, -1, until)
    _check_close(out, reference.paged_attention(*args, d**-0.5, -1, until), torch.bfloat16)
    (q, k, v), cu = random_packed_qkv([577] * 40 + [1, 130, 3000], 16, d, torch.bfloat16, seed=d)
    out = ops.varlen_attention(q, k, v, cu, d**-0.5)
    _check_close(out, reference.varlen_attention(q, k, v, cu, d**-0.5), torch.bfloat16)
