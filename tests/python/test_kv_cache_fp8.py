"""FP8 (e4m3) KV cache on the CPU path: quantisation, attention accuracy and the engine option.

Tolerances (stated, not tuned to pass): e4m3 keeps 3 mantissa bits, so one stored value is within
2^-4 relative (plus 2^-10 * scale absolute in the subnormal range) of the real one; attention over
FP8 K/V stays within 0.15 (max) / 0.015 (mean) of dense float32 attention for unit-variance inputs
(measured 0.097 / 0.008: a 3.6% RMS rounding error per element moves the scores and outputs);
the tiny LLaVA engine with an FP8 cache keeps >= 90% of fp32's greedy tokens and a next-token
KL(fp32 || fp8) over every prompt position below 5e-3 on average and 2e-2 at most (measured
1.1e-3 mean: e4m3's 3 mantissa bits).
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from mmcore import Engine, SamplingParams
from mmcore.engine.kv_cache import is_kv_scale, load_kv_scales, resolve_kv_cache_dtype
from mmcore.kernels import cpu, ops, reference

FP8 = torch.float8_e4m3fn


def _quantized(x, scale):
    caches = [torch.zeros(2, 4, x.shape[1], x.shape[2], dtype=FP8) for _ in range(2)]
    slots = torch.arange(x.shape[0])
    ops.reshape_and_cache(x, x, *caches, slots, k_scale=scale, v_scale=scale)
    return reference.dequantize_kv(caches[0].view(-1, *x.shape[1:])[: x.shape[0]], scale)


def test_reshape_and_cache_fp8_round_trip_error_is_bounded():
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 0.05, 3.0])
    x = torch.randn(8, 3, 16, generator=gen) * scale[:, None] * 4
    err = (_quantized(x, scale) - x).abs()
    bound = x.abs() * 2.0**-4 + scale[:, None] * 2.0**-10
    assert (err <= bound).all(), (err - bound).max()


def test_reshape_and_cache_fp8_saturates_instead_of_nan():
    x = torch.tensor([[[1e4, -1e4, 500.0, 100.0]]]).expand(2, 1, 4).contiguous()
    out = _quantized(x, torch.tensor([1.0]))
    assert torch.equal(out[0, 0], torch.tensor([448.0, -448.0, 448.0, 96.0]))


def _fp8_batch(gen, hq=8, hkv=2, d=32, bs=16):
    """Caches quantised from known float32 K/V; returns both views of the same batch."""
    seq_lens, num_q = [70, 33, 120], [1, 33, 50]
    blocks = [math.ceil(n / bs) for n in seq_lens]
    num_blocks = sum(blocks) + 2
    k32 = torch.randn(num_blocks, bs, hkv, d, generator=gen)
    v32 = torch.randn(num_blocks, bs, hkv, d, generator=gen)
    k_scale, v_scale = torch.tensor([0.02, 0.03]), torch.tensor([0.025, 0.01])
    k8 = reference.quantize_fp8(k32.view(-1, hkv, d), k_scale).view(k32.shape)
    v8 = reference.quantize_fp8(v32.view(-1, hkv, d), v_scale).view(v32.shape)
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32)
    at = 0
    for b, n in enumerate(blocks):
        tables[b, :n] = perm[at : at + n]
        at += n
    query = torch.randn(sum(num_q), hq, d, generator=gen)
    starts = torch.tensor([0, *torch.tensor(num_q).cumsum(0).tolist()], dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    return (query, k32, v32, tables, lens, starts), (query, k8, v8, tables, lens, starts), scales


def test_fp8_attention_close_to_dense_float32():
    # K/V scales chosen so the quantised values span e4m3's normal range (|x| / scale ~ 50).
    dense, quant, scales = _fp8_batch(torch.Generator().manual_seed(1))
    want = reference.paged_attention(*dense, 0.2)
    got = reference.paged_attention(*quant, 0.2, **scales)
    err = (got - want).abs()
    assert err.max() <= 0.15 and err.mean() <= 0.015, (err.max(), err.mean())


@pytest.mark.parametrize("window", [-1, 20])
def test_cpu_path_and_op_match_reference_with_fp8_caches(window):
    _, quant, scales = _fp8_batch(torch.Generator().manual_seed(2))
    until = torch.full((quant[0].shape[0],), -1, dtype=torch.int32)
    until[40:60] = 100  # an image span inside the third request's chunk
    want = reference.paged_attention(*quant, 0.3, window, until, **scales)
    got_cpu = cpu.paged_attention(*quant, 0.3, window, until, **scales)
    got_op = ops.paged_attention(*quant, 0.3, window, until, **scales)
    torch.testing.assert_close(got_cpu, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_op, want, atol=1e-6, rtol=1e-6)


def test_fp8_ops_reject_missing_or_malformed_scales():
    _, quant, scales = _fp8_batch(torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="needs k_scale"):
        ops.paged_attention(*quant, 0.3)
    with pytest.raises(ValueError, match=r"v_scale must be float32 \[2\]"):
        ops.paged_attention(*quant, 0.3, k_scale=scales["k_scale"], v_scale=torch.ones(3))
    key = torch.zeros(2, 2, 32)
    with pytest.raises(ValueError, match="FP8 caches only"):
        ops.reshape_and_cache(
            key, key, torch.zeros(4, 16, 2, 32), torch.zeros(4, 16, 2, 32), torch.arange(2),
            k_scale=torch.ones(2), v_scale=torch.ones(2),
        )  # fmt: skip


def test_kv_cache_dtype_names_and_checkpoint_scale_names():
    assert resolve_kv_cache_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert resolve_kv_cache_dtype("fp8", torch.bfloat16) == FP8
    assert resolve_kv_cache_dtype("fp8_e4m3", torch.float32) == FP8
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        resolve_kv_cache_dtype("int8", torch.float32)
    assert is_kv_scale("model.layers.3.self_attn.k_scale")
    assert is_kv_scale("language_model.model.layers.0.self_attn.v_proj.output_scale")
    assert not is_kv_scale("model.layers.3.self_attn.k_proj.weight")
    assert not is_kv_scale("vision_tower.vision_model.encoder.layers.0.self_attn.k_scale")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        Engine("unused", kv_cache_dtype="fp16")


def _prompts(photos):
    return [
        "USER: hello there, how are you?\nASSISTANT:",
        "USER: tell me a story about a dog\nASSISTANT:",
        "USER: what is two plus two?\nASSISTANT:",
        {"prompt": "USER: <image>\nWhat is this?\nASSISTANT:",
         "multi_modal_data": {"image": [photos["astronaut"]]}},
        {"prompt": "USER: <image> and <image>\nCompare.\nASSISTANT:",
         "multi_modal_data": {"image": [photos["coffee"], photos["camera"]]}},
        {"prompt": "USER: <image>\nDescribe the cat.\nASSISTANT:",
         "multi_modal_data": {"image": [photos["chelsea"]]}},
    ]  # fmt: skip


def _prompt_distributions(out) -> torch.Tensor:
    """[positions, vocab] log-probabilities of every prompt position after the first."""
    rows = [lp for lp in out.prompt_logprobs if lp is not None]
    vocab = max(max(r) for r in rows) + 1
    dense = torch.full((len(rows), vocab), -math.inf)
    for i, row in enumerate(rows):
        for tok, lp in row.items():
            dense[i, tok] = lp.logprob
    return dense


def test_engine_fp8_kv_cache_close_to_fp32_and_doubles_blocks(tiny_llava_dir, photos):
    prompts = _prompts(photos)
    budget = 512 * 1024  # small enough that neither engine hits the max-sequences cap
    base = Engine(tiny_llava_dir, seed=0, kv_cache_memory_bytes=budget)
    fp8 = Engine(tiny_llava_dir, seed=0, kv_cache_memory_bytes=budget, kv_cache_dtype="fp8")
    assert fp8.runner.kv_caches[0][0].dtype == FP8 and len(fp8.runner.kv_caches[0]) == 4
    # float32 -> e4m3: a quarter of the bytes per block, four times the blocks (bf16: twice).
    assert fp8.config.num_blocks == 4 * base.config.num_blocks
    assert fp8.config.kv_block_bytes * 4 == base.config.kv_block_bytes

    greedy = SamplingParams(temperature=0.0, max_tokens=8, prompt_logprobs=-1)
    want = base.generate(prompts, greedy, use_tqdm=False)
    got = fp8.generate(prompts, greedy, use_tqdm=False)
    pairs = [
        (a, b)
        for w, g in zip(want, got)
        for a, b in zip(w.outputs[0].token_ids, g.outputs[0].token_ids)
    ]
    same = sum(a == b for a, b in pairs) / len(pairs)
    kls = []
    for w, g in zip(want, got):
        p, q = _prompt_distributions(w), _prompt_distributions(g)
        kls.append(F.kl_div(q, p, log_target=True, reduction="none").sum(-1))
    kl = torch.cat(kls)
    print(f"fp8 kv: greedy tokens equal {same:.3f}, KL mean {kl.mean():.2e} max {kl.max():.2e}")
    assert same >= 0.9
    assert kl.mean() < 5e-3 and kl.max() < 2e-2


def test_engine_fp8_reads_checkpoint_scales(tiny_llava_dir, tmp_path):
    from safetensors.torch import save_file

    model_dir = tmp_path / "scaled"
    shutil.copytree(tiny_llava_dir, model_dir)
    save_file(
        {
            "model.language_model.layers.1.self_attn.k_scale": torch.tensor(0.5),
            "model.language_model.layers.0.self_attn.v_proj.output_scale": torch.tensor([2.0, 3.0]),
        },
        str(model_dir / "kv_scales.safetensors"),
    )
    engine = Engine(str(model_dir), kv_cache_dtype="fp8", kv_cache_memory_bytes=64 * 1024)
    caches = engine.runner.kv_caches
    assert torch.equal(caches[1][2], torch.tensor([0.5, 0.5]))
    assert torch.equal(caches[0][3], torch.tensor([2.0, 3.0]))
    assert torch.equal(caches[0][2], torch.ones(2)) and torch.equal(caches[1][3], torch.ones(2))
    out = engine.generate(["USER: hi\nASSISTANT:"], SamplingParams(max_tokens=3), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3
    # The model dtype cache ignores the scale tensors (they are not weights).
    plain = Engine(str(model_dir), kv_cache_memory_bytes=64 * 1024)
    assert len(plain.runner.kv_caches[0]) == 2
    files = sorted(str(p) for p in model_dir.glob("*.safetensors"))
    with pytest.raises(ValueError, match="expected 1 or 2"):
        save_file(
            {"model.layers.0.self_attn.k_scale": torch.ones(3)}, str(tmp_path / "bad.safetensors")
        )
        load_kv_scales([*files, str(tmp_path / "bad.safetensors")], 2, 2)
