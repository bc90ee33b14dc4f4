"""FP8 weights on a CUDA GPU (sm89+): the cuBLASLt / CUTLASS ``_scaled_mm`` path, CUDA graphs and
the engine. Bounds as in test_fp8_linear.py (two e4m3 roundings: 0.13 of ``|x| @ |W|^T``)."""

from __future__ import annotations

import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.layers import fp8
from mmcore.layers.linear import MergedColumnParallelLinear
from mmcore.models.weights import load_named_weights
from mmcore.testing.tiny_checkpoints import build_tiny_llava

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
        reason="needs a CUDA GPU of compute capability >= 8.9",
    ),
]
TEXT_D64 = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
VISION_D64 = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [1, 5, 300])
def test_scaled_gemm_on_gpu_matches_float32(dtype, tokens):
    torch.manual_seed(0)
    x = torch.randn(tokens, 4096, device="cuda") * torch.rand(tokens, 1, device="cuda") * 4
    w, bias = torch.randn(1024, 4096, device="cuda") * 0.02, torch.randn(1024, device="cuda")
    w_fp8, w_scale = fp8.quantize_rows(w)
    y = fp8.fp8_linear(x.to(dtype), w_fp8, w_scale.view(-1), bias.to(dtype))
    assert y.dtype == dtype
    ref = x @ w.T + bias
    bound = 0.13 * (x.abs() @ w.abs().T) + 0.02 * ref.abs() + 1e-2  # + output rounding
    assert ((y.float() - ref).abs() <= bound).all()


def test_float16_layers_take_the_gemms_float16_output():
    # Not a bfloat16 output cast to float16: that rounds to bfloat16's 8-bit mantissa (and costs
    # a copy of the output).
    torch.manual_seed(2)
    x = torch.randn(300, 4096, device="cuda", dtype=torch.float16)
    w_fp8, w_scale = fp8.quantize_rows(torch.randn(1024, 4096, device="cuda") * 0.02)
    y = fp8.fp8_linear(x, w_fp8, w_scale.view(-1), None)
    x_fp8, x_scale = fp8.quantize_rows(x)
    want = torch._scaled_mm(
        x_fp8, w_fp8.t(), scale_a=x_scale, scale_b=w_scale.view(1, -1), out_dtype=torch.float16
    )
    assert torch.equal(y, want)
    assert not torch.equal(want, want.to(torch.bfloat16).to(torch.float16))


def test_fp8_layer_replays_in_a_cuda_graph():
    layer = MergedColumnParallelLinear(
        256, {"gate_proj": 512, "up_proj": 512}, bias=False, dtype=torch.bfloat16, device="cuda"
    )
    weights = {n: torch.randn(512, 256) * 0.02 for n in ("gate_proj.weight", "up_proj.weight")}
    load_named_weights(layer, weights.items(), lambda n: n)
    layer.quantize_fp8()
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    eager = layer(x)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        layer(x)  # warm-up off the default stream, as capture requires
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        out = layer(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(out, layer(x))
    assert not torch.equal(out, eager)


def test_engine_fp8_on_gpu_agrees_with_bf16(tmp_path):
    model_dir = build_tiny_llava(
        tmp_path, seed=3, text_overrides=TEXT_D64, vision_overrides=VISION_D64
    )
    prompts = [
        f"USER: tell me about {w} and the weather.\nASSISTANT:" for w in ("cats", "rockets", "tea")
    ]
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=-1)
    logprobs = {}
    for name, options in (("bf16", {}), ("fp8", {"quantization": "fp8", "quantize_vision": True})):
        engine = Engine(model_dir, device="cuda", dtype="bfloat16", **options)
        rows = []
        for out in engine.generate(prompts, params, use_tqdm=False):
            for position in out.prompt_logprobs[1:]:
                row = torch.full((len(position),), -torch.inf, dtype=torch.float64)
                for token, lp in position.items():
                    row[token] = lp.logprob
                rows.append(row)
        logprobs[name] = torch.stack(rows)
        engine.shutdown()
    base, quant = logprobs["bf16"], logprobs["fp8"]
    kl = float((base.exp() * (base - quant)).sum(-1).mean())
    assert float((base.argmax(-1) == quant.argmax(-1)).double().mean()) >= 0.85
    assert 0 < kl <= 0.05, kl


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 4096), (7, 11008), (300, 5120), (3, 4095), (0, 64)])
def test_per_token_quant_kernel_equals_torch_bit_for_bit(dtype, shape):
    """The fused quantiser against the torch reference (amax, divide, clamp, divide, cast):
    same scales and e4m3 bytes, for aligned and unaligned rows, an all-zero row, strided rows
    and a CUDA graph."""
    from mmcore.kernels import reference
    from mmcore.kernels.quant_ops import per_token_quant_fp8

    torch.manual_seed(1)
    x = (torch.randn(shape, device="cuda") * torch.rand(shape[0], 1, device="cuda") * 8).to(dtype)
    if shape[0] > 1:
        x[1] = 0  # the scale floor
    for rows in (x, torch.cat([x, x], dim=1)[:, : shape[1]]):  # contiguous, then strided rows
        got, got_scale = per_token_quant_fp8(rows, fp8.MIN_SCALE)
        want, want_scale = reference.per_token_quant_fp8(rows, fp8.MIN_SCALE)
        assert torch.equal(got_scale, want_scale)
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    if shape[0] == 0:
        return  # nothing to capture
    static = x.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, _ = per_token_quant_fp8(static, fp8.MIN_SCALE)
    static.copy_(x * 2)
    graph.replay()
    want, _ = reference.per_token_quant_fp8(x * 2, fp8.MIN_SCALE)
    assert torch.equal(captured.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_per_token_quant_kernel_divides_as_torch_over_wide_ranges(dtype):
    """The quantiser divides by the scale through its reciprocal plus one correction (exact for
    normal scales): 16M values spread over 2^-24 .. 2^15 around each row's maximum land on
    every e4m3 rounding boundary, and must give torch's bytes; a row holding an inf takes the
    full division (inf / inf = NaN, finite / inf = 0)."""
    from mmcore.kernels import reference
    from mmcore.kernels.quant_ops import per_token_quant_fp8

    gen = torch.Generator(device="cuda").manual_seed(5)
    rows, hidden = 4096, 4096
    magnitude = torch.exp2(torch.randint(-24, 16, (rows, hidden), generator=gen, device="cuda"))
    x = torch.randn(rows, hidden, generator=gen, device="cuda") * magnitude
    x = x.clamp(-6e4, 6e4).to(dtype)  # float16's range
    x[3, 17] = float("inf")
    got, got_scale = per_token_quant_fp8(x, fp8.MIN_SCALE)
    want, want_scale = reference.per_token_quant_fp8(x, fp8.MIN_SCALE)
    assert torch.equal(got_scale, want_scale)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert got[3].float().isnan().sum() == 1 and float(got[3].float().nan_to_num().abs().sum()) == 0
