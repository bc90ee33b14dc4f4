"""FP8 (e4m3) linear layers against float32 references, on CPU (torch's CPU ``_scaled_mm``).

Tolerances: e4m3 keeps 3 mantissa bits, so a quantised value is within 2^-4 (relative) of its
input and each product x_k * w_k within (1 + 2^-4)^2 - 1 < 0.13 of its own magnitude:
``|y_fp8 - y| <= 0.13 * (|x| @ |W|^T)`` must hold element-wise. Against the dequantised
operands (what the GEMM is meant to compute) the error is float32 accumulation only.
Tensor-parallel shards are built rank by rank (as tests/python/test_parallel_layers.py does).
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from mmcore.distributed import parallel_state
from mmcore.engine_args import EngineArgs
from mmcore.layers import fp8, fp8_linear, linear
from mmcore.layers.fp8_linear import Fp8CheckpointScheme
from mmcore.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from mmcore.layers.sharded_weights import LazyWeight, ScaleTarget
from mmcore.models.weights import WeightLoadError, load_named_weights
from mmcore.quantization import QuantizationConfig, resolve_quantization
from mmcore.quantization.apply import finish_quantization, prepare_fp8_checkpoint_layers
from mmcore.testing import fp8_checkpoints as fp8ckpt

F32 = dict(dtype=torch.float32, device="cpu")
PRODUCT_BOUND = 0.13  # (1 + 2^-4)^2 - 1, rounded up


def _check_against_float32(x, w, bias, y):
    ref = x @ w.T + (bias if bias is not None else 0)
    bound = PRODUCT_BOUND * (x.abs() @ w.abs().T) + 1e-6
    assert ((y - ref).abs() <= bound).all()
    assert (y - ref).norm() / ref.norm() < 0.05  # typical error, far below the bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 37])
def test_fp8_linear_matches_float32_and_dequantised_reference(dtype, tokens):
    torch.manual_seed(0)
    x = torch.randn(tokens, 96) * torch.rand(tokens, 1) * 4  # token magnitudes differ
    w, bias = torch.randn(80, 96) * 0.05, torch.randn(80)
    w_fp8, w_scale = fp8.quantize_rows(w)
    y = fp8.fp8_linear(x.to(dtype), w_fp8, w_scale.view(-1), bias.to(dtype))
    assert y.dtype == dtype and y.shape == (tokens, 80)
    x_fp8, x_scale = fp8.quantize_rows(x.to(dtype))
    dequantised = (x_fp8.float() * x_scale) @ (w_fp8.float() * w_scale).T + bias
    torch.testing.assert_close(
        y.float(), dequantised, rtol=1e-2 if dtype != torch.float32 else 1e-5, atol=1e-2
    )
    if dtype == torch.float32:
        _check_against_float32(x, w, bias, y)


@pytest.mark.parametrize("out_features,in_features", [(80, 24), (40, 96)])
def test_features_the_fp8_gemm_refuses_multiply_the_dequantised_weight(out_features, in_features):
    # torch._scaled_mm takes multiples of 16 only; such a layer runs W8A16 on any device.
    torch.manual_seed(1)
    x = torch.randn(5, in_features, dtype=torch.bfloat16)
    w_fp8, w_scale = fp8.quantize_rows(torch.randn(out_features, in_features) * 0.05)
    bias = torch.randn(out_features, dtype=torch.bfloat16)
    y = fp8.fp8_linear(x, w_fp8, w_scale.view(-1), bias)
    dequantised = (w_fp8.float() * w_scale).to(torch.bfloat16)
    assert torch.equal(y, torch.nn.functional.linear(x, dequantised, bias))


def test_no_tokens_give_an_empty_output():
    w_fp8, w_scale = fp8.quantize_rows(torch.randn(32, 64))
    y = fp8.fp8_linear(torch.randn(2, 0, 64), w_fp8, w_scale.view(-1), torch.zeros(32))
    assert y.shape == (2, 0, 32)


def test_per_channel_scales_map_each_row_maximum_to_448():
    w = torch.randn(8, 64)
    w[3] = 0  # an all-zero row keeps a finite scale
    w_fp8, scale = fp8.quantize_rows(w)
    assert w_fp8.dtype == torch.float8_e4m3fn
    nonzero = torch.arange(8) != 3
    torch.testing.assert_close(scale[nonzero, 0], w[nonzero].abs().amax(1) / 448)
    assert w_fp8[nonzero].float().abs().amax(1).eq(448).all()
    assert scale[3].item() == pytest.approx(fp8.MIN_SCALE) and w_fp8[3].float().eq(0).all()


def test_static_input_scale_saturates_instead_of_overflowing():
    w_fp8, w_scale = fp8.quantize_rows(torch.eye(16))  # 16: the FP8 GEMM's smallest size
    x = torch.zeros(1, 16)
    x[0, :4] = torch.tensor([1.0, -2.0, 1000.0, 0.5])
    y = fp8.fp8_linear(x, w_fp8, w_scale.view(-1), None, torch.tensor(2.0 / 448))
    want = torch.zeros(1, 16)
    want[0, :4] = torch.tensor([1.0, -2.0, 2.0, 0.5])
    torch.testing.assert_close(y, want)


def _layers():
    return {
        "column": lambda: ColumnParallelLinear(48, 64, bias=True, **F32),
        "merged": lambda: MergedColumnParallelLinear(
            48, {"gate_proj": 64, "up_proj": 64}, bias=False, **F32
        ),
        "qkv": lambda: QKVParallelLinear(48, 16, 4, 2, bias=True, **F32),
        "row": lambda: RowParallelLinear(64, 48, bias=True, **F32),
    }


def _full_weights(kind: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(len(kind))

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.05

    return {
        "column": {"weight": rand(64, 48), "bias": rand(64)},
        "merged": {"gate_proj.weight": rand(64, 48), "up_proj.weight": rand(64, 48)},
        "qkv": {
            "q_proj.weight": rand(64, 48),
            "k_proj.weight": rand(32, 48),
            "v_proj.weight": rand(32, 48),
            "q_proj.bias": rand(64),
            "k_proj.bias": rand(32),
            "v_proj.bias": rand(32),
        },
        "row": {"weight": rand(48, 64), "bias": rand(48)},
    }[kind]


def _build(kind: str, weights: dict):
    layer = _layers()[kind]()
    load_named_weights(layer, weights.items(), lambda n: n)
    return layer


def _dense(layer) -> torch.Tensor:
    return layer.weight.float() * layer.weight_scale[:, None]


@pytest.mark.parametrize("kind", ["column", "merged", "qkv", "row"])
def test_online_quantised_layers_match_float32(kind):
    torch.manual_seed(2)
    layer = _build(kind, _full_weights(kind))
    w, bias = layer.weight.detach().clone(), layer.bias
    x = torch.randn(9, layer.weight.shape[1])
    layer.quantize_fp8()
    assert layer.is_fp8 and layer.weight_scale.shape == (w.shape[0],)
    _check_against_float32(x, w, bias, layer(x))


def _as_rank(monkeypatch, rank: int, size: int) -> None:
    monkeypatch.setattr(
        parallel_state, "_STATE", parallel_state.TensorParallelState(rank=rank, world_size=size)
    )
    monkeypatch.setattr(linear, "all_reduce", lambda t: t)


@pytest.mark.parametrize("kind", ["column", "merged", "qkv", "row"])
def test_tensor_parallel_shards_quantise_to_the_one_rank_weights(monkeypatch, kind):
    weights = _full_weights(kind)
    one = _build(kind, weights)
    one.quantize_fp8()
    size, shards = 2, []
    # The row's maximum over the ranks: what all_reduce_max gives every rank.
    row_amax = weights["weight"].abs().amax(1) if kind == "row" else None
    monkeypatch.setattr(fp8_linear, "all_reduce_max", lambda amax: amax.copy_(row_amax))
    for rank in range(size):
        _as_rank(monkeypatch, rank, size)
        layer = _layers()[kind]()
        load_named_weights(layer, weights.items(), lambda n: n)
        layer.quantize_fp8()
        shards.append(layer)
    if kind == "row":  # each rank holds input columns of every row, scaled alike
        assert all(torch.equal(s.weight_scale, one.weight_scale) for s in shards)
        weight = torch.cat([s.weight.view(torch.uint8) for s in shards], 1)
        assert torch.equal(weight, one.weight.view(torch.uint8))
        return
    full = {s.prefix: s for s in one._scale_shards("")}
    for layer in shards:  # each rank's rows of each projection equal one rank's same rows
        for shard in layer._scale_shards(""):
            mine = slice(shard.offset, shard.offset + shard.local)
            first = full[shard.prefix].offset + shard.start
            theirs = slice(first, first + shard.local)
            assert torch.equal(layer.weight_scale[mine], one.weight_scale[theirs])
            assert torch.equal(
                layer.weight[mine].view(torch.uint8), one.weight[theirs].view(torch.uint8)
            )


def test_checkpoint_scales_load_per_shard_for_each_strategy():
    weights = _full_weights("qkv")
    q = {n: t for n, t in weights.items() if n.endswith("bias")}
    per_tensor = {}
    for proj in ("q_proj", "k_proj", "v_proj"):
        w_fp8, scale = fp8ckpt.quantize_tensor(weights[f"{proj}.weight"])
        q[f"{proj}.weight"], per_tensor[proj] = w_fp8, scale
        q[f"{proj}.weight_scale"] = scale
        q[f"{proj}.input_scale"] = torch.tensor([0.01 * (1 + len(per_tensor))])
    layer = QKVParallelLinear(48, 16, 4, 2, bias=True, **F32)
    scheme = Fp8CheckpointScheme("weight_scale", "tensor", None, static_input=True)
    prepare_fp8_checkpoint_layers(layer, set(q), scheme)
    load_named_weights(layer, q.items(), lambda n: n)
    layer.finish_fp8_checkpoint()
    assert torch.equal(layer.weight_scale[:64], per_tensor["q_proj"].expand(64))
    assert torch.equal(layer.weight_scale[64:96], per_tensor["k_proj"].expand(32))
    assert layer.input_scale.item() == pytest.approx(0.04)  # the shards' maximum
    assert layer(torch.randn(3, 48)).shape == (3, 128)


def test_blockwise_checkpoint_loads_to_per_channel_of_the_dequantised_weight():
    weights, block = _full_weights("merged"), (16, 32)
    q = {}
    for name, tensor in weights.items():
        q[name], q[name + "_scale_inv"] = fp8ckpt.quantize_blocks(tensor, block)
    layer = MergedColumnParallelLinear(48, {"gate_proj": 64, "up_proj": 64}, bias=False, **F32)
    prepare_fp8_checkpoint_layers(
        layer, set(q), Fp8CheckpointScheme("weight_scale_inv", "block", block)
    )
    load_named_weights(layer, q.items(), lambda n: n)
    layer.finish_fp8_checkpoint()
    assert [n for n, _ in layer.named_parameters()] == ["weight", "weight_scale"]
    reference = MergedColumnParallelLinear(48, {"gate_proj": 64, "up_proj": 64}, bias=False, **F32)
    dequantised = {n: fp8ckpt.dequantize_blocks(q[n], q[n + "_scale_inv"], block) for n in weights}
    load_named_weights(reference, dequantised.items(), lambda n: n)
    reference.quantize_fp8()
    assert torch.equal(layer.weight_scale, reference.weight_scale)
    assert torch.equal(layer.weight.view(torch.uint8), reference.weight.view(torch.uint8))


def test_blockwise_scales_that_split_a_block_over_ranks_are_refused(monkeypatch):
    _as_rank(monkeypatch, 1, 2)
    layer = ColumnParallelLinear(48, 48, bias=False, **F32)  # rank 1 starts at row 24
    with pytest.raises(ValueError, match="do not align"):
        layer.prepare_fp8_checkpoint(
            Fp8CheckpointScheme("weight_scale_inv", "block", (16, 16)), "x"
        )


def test_partly_quantised_merged_layer_and_missing_scales_are_refused():
    layer = MergedColumnParallelLinear(48, {"gate_proj": 64, "up_proj": 64}, bias=False, **F32)
    scheme = Fp8CheckpointScheme("weight_scale", "channel")
    with pytest.raises(ValueError, match="only some of its projections"):
        prepare_fp8_checkpoint_layers(layer, {"gate_proj.weight_scale"}, scheme)
    prepare_fp8_checkpoint_layers(layer, {"gate_proj.weight_scale", "up_proj.weight_scale"}, scheme)
    w = {n: fp8ckpt.quantize_channel(t)[0] for n, t in _full_weights("merged").items()}
    with pytest.raises(
        WeightLoadError, match="missing weights: gate_proj.weight_scale, up_proj.weight_scale"
    ):
        load_named_weights(layer, w.items(), lambda n: n)


def test_gpus_below_sm89_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(ValueError, match="sm80"):
        fp8.check_fp8_device("cuda:0")
    fp8.check_fp8_device("cpu")


class _Config:
    def __init__(self, quantization_config=None):
        if quantization_config is not None:
            self.quantization_config = quantization_config


@pytest.mark.parametrize(
    ("quantization_config", "match"),
    [
        ({"quant_method": "awq", "bits": 4}, "'awq'"),
        ({"quant_method": "gptq", "bits": 4}, "'gptq'"),
        ({"quant_method": "bitsandbytes"}, "'bitsandbytes'"),
        ({"quant_method": "compressed-tensors", "format": "int-quantized"}, "'int-quantized'"),
        ({"quant_method": "fp8", "activation_scheme": "static"}, "static"),
        ({"quant_method": "fp8", "weight_block_size": None}, "weight_block_size"),
    ],
)
def test_unsupported_checkpoint_quantisation_is_named(quantization_config, match):
    with pytest.raises(ValueError, match=match):
        resolve_quantization(_Config(quantization_config), None)


def test_quantization_option_against_the_checkpoint():
    ct = fp8ckpt.compressed_tensors_config("channel", static_input=False)
    assert resolve_quantization(_Config(), None) is None
    assert resolve_quantization(_Config(), "fp8").checkpoint is None  # online
    assert resolve_quantization(_Config(ct), "fp8").checkpoint.strategy == "channel"
    assert resolve_quantization(_Config(ct), None).method == "compressed-tensors"
    with pytest.raises(ValueError, match="needs a compressed-tensors checkpoint"):
        resolve_quantization(_Config(), "compressed-tensors")
    with pytest.raises(ValueError, match="quantize_vision needs"):
        resolve_quantization(_Config(), None, quantize_vision=True)
    block = {**ct, "config_groups": {"g": json.loads(json.dumps(ct["config_groups"]["group_0"]))}}
    block["config_groups"]["g"]["weights"].update(strategy="block", block_structure=[128, 128])
    scheme = resolve_quantization(_Config(block), None).checkpoint
    assert (scheme.scale_name, scheme.strategy, scheme.block) == (
        "weight_scale",
        "block",
        (128, 128),
    )
    weight_only = {**ct, "config_groups": {"g": {**ct["config_groups"]["group_0"]}}}
    weight_only["config_groups"]["g"]["input_activations"] = None
    with pytest.raises(ValueError, match="weight-only"):
        resolve_quantization(_Config(weight_only), None)


def test_engine_and_cli_options():
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    args = EngineArgs.from_cli_args(
        parser.parse_args(["--quantization", "fp8", "--quantize-vision"])
    )
    assert (args.quantization, args.quantize_vision) == ("fp8", True)
    assert (
        EngineArgs.from_kwargs(quantization="compressed-tensors").quantization
        == "compressed-tensors"
    )
    with pytest.raises(ValueError, match="quantization"):
        EngineArgs.from_kwargs(quantization="awq")


def test_scale_targets_read_lazy_checkpoint_slices(tmp_path):
    """Tensor parallel ranks read scales as safetensors slices: [N, 1] or [N] per channel,
    [] or [1] per tensor."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    channel = torch.arange(8, dtype=torch.float32)
    tensors = {
        "c2": channel[:, None].clone(),
        "c1": channel,
        "t0": torch.tensor(3.0),
        "t1": torch.ones(1),
    }
    save_file(tensors, tmp_path / "s.safetensors")
    with safe_open(tmp_path / "s.safetensors", framework="pt") as f:
        for name in ("c2", "c1"):
            dest = torch.zeros(4)
            target = ScaleTarget(dest, "weight_scale", (8, 1), 0, 4)
            lazy = LazyWeight(f, name)
            assert target.fits(lazy.shape)
            dest.copy_(target.read(lazy))
            assert torch.equal(dest, channel[4:])
        for name, value in (("t0", 3.0), ("t1", 1.0)):
            dest = torch.zeros(4)
            target = ScaleTarget(dest, "weight_scale", (1,), per_tensor=True)
            lazy = LazyWeight(f, name)
            assert target.fits(lazy.shape) and not target.fits((2,))
            dest.copy_(target.read(lazy))
            assert dest.eq(value).all()


def test_models_without_fp8_layers_are_refused():
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no linear layers that run FP8"):
        finish_quantization(plain, QuantizationConfig("fp8", None))
    column = ColumnParallelLinear(16, 16, bias=False, **F32)
    column.weight.data.normal_()
    with pytest.raises(ValueError, match="quantize_vision"):
        finish_quantization(column, QuantizationConfig("fp8", None, quantize_vision=True))
