"""Padding a gated MLP's inner width for the GPU's GEMMs changes no output."""

from __future__ import annotations

import torch

from mmcore.layers.gemm_alignment import pad_gated_mlp
from mmcore.models.qwen2_vl.vision import VisionMLP


class _Config:
    fullatt_block_indexes = [0]  # marks a Qwen2.5-VL (gated) vision config
    intermediate_size = 20
    hidden_act = "silu"


def test_padded_mlp_gives_the_same_output():
    torch.manual_seed(0)
    mlp = VisionMLP(_Config(), 16, dtype=torch.float32, device="cpu", disable_tp=True)
    for p in mlp.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(7, 16)
    before = mlp(x)
    assert pad_gated_mlp(mlp.gate_up_proj, mlp.down_proj) == 24
    assert mlp.gate_up_proj.weight.shape == (48, 16) and mlp.down_proj.weight.shape == (16, 24)
    assert mlp.gate_up_proj.bias.shape == (48,)
    torch.testing.assert_close(mlp(x), before, rtol=1e-6, atol=1e-5)
    # Already aligned: nothing changes.
    assert pad_gated_mlp(mlp.gate_up_proj, mlp.down_proj) == 24
    assert mlp.down_proj.weight.shape == (16, 24)


def test_the_hook_leaves_cpu_weights_alone():
    mlp = VisionMLP(_Config(), 16, dtype=torch.float32, device="cpu", disable_tp=True)
    mlp.after_weights_loaded()
    assert mlp.down_proj.weight.shape == (16, 20)
