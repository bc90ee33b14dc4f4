"""Shared layers against their HF counterparts; the CLIP tower's feature selection variants."""

import pytest
import torch
from transformers import LlamaConfig
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as hf_apply_rope

from mmcore.kernels import cpu, reference
from mmcore.layers import attention
from mmcore.layers.activations import get_activation
from mmcore.layers.norm import RMSNorm
from mmcore.layers.rotary import RotaryEmbedding
from mmcore.model_loader import load_model
from mmcore.models.clip import resolve_feature_layers
from mmcore.testing.oracle import hf_image_features, load_hf
from mmcore.testing.tiny_checkpoints import build_tiny_llava

ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    },
    "yarn": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 256,
    },
}


@pytest.mark.parametrize("rope", list(ROPES))
def test_rotary_matches_hf(rope):
    config = LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters=dict(ROPES[rope]),
    )
    head_dim = 32
    positions = torch.tensor([0, 1, 5, 100, 1000, 3000, 4095])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(len(positions), 4, head_dim, generator=g)
    k = torch.randn(len(positions), 2, head_dim, generator=g)
    got_q, got_k = RotaryEmbedding(config, head_dim, device="cpu")(positions, q, k)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions[None])
    # HF layout: [batch, heads, seq, dim]
    want_q, want_k = hf_apply_rope(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    torch.testing.assert_close(got_q, want_q[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_k, want_k[0].transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_position_dependent_rope_is_rejected():
    config = LlamaConfig(
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    )
    with pytest.raises(ValueError, match="dynamic"):
        RotaryEmbedding(config, 64, device="cpu")


def test_rmsnorm_matches_hf():
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1)) * 3
    ours = RMSNorm(64, 1e-6, dtype=torch.float32, device="cpu")
    theirs = LlamaRMSNorm(64, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        theirs.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize(
    "name", ["gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "relu"]
)
def test_activations_match_hf(name):
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(get_activation(name)(x), ACT2FN[name](x))


def test_unknown_activation_names_itself():
    with pytest.raises(ValueError, match="swiglu_xyz"):
        get_activation("swiglu_xyz")


def test_attention_dispatch_on_cpu_uses_the_batched_cpu_path_else_the_reference():
    x = torch.zeros(1)
    assert attention.select_op("paged_attention", x) is cpu.paged_attention
    assert attention.select_op("varlen_attention", x) is cpu.varlen_attention
    assert attention.select_op("reshape_and_cache", x) is cpu.reshape_and_cache
    assert attention.select_op("rms_norm", x) is reference.rms_norm  # no CPU version of its own


def test_feature_layer_indices_resolve_like_hf_hidden_states():
    assert resolve_feature_layers(-2, 3) == [2]
    assert resolve_feature_layers([-3, -1], 3) == [1, 3]
    assert resolve_feature_layers(0, 3) == [0]
    with pytest.raises(ValueError, match="out of range"):
        resolve_feature_layers(-5, 3)


@pytest.mark.parametrize(
    "feature_layer,strategy", [([-3, -1], "full"), (1, "default"), (-1, "full")]
)
def test_clip_feature_selection_variants_match_hf(tmp_path, photos, feature_layer, strategy):
    model_dir = build_tiny_llava(
        tmp_path,
        seed=3,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy,
    )
    hf, hf_processor = load_hf(model_dir)
    model, _ = load_model(model_dir, dtype=torch.float32, device="cpu")
    images = [photos["astronaut"], photos["coffee"]]
    inputs = hf_processor(text="<image><image>", images=images, return_tensors="pt")
    expected = hf_image_features(hf, inputs)
    with torch.no_grad():
        got = model.encode("image", [{"pixel_values": p} for p in inputs["pixel_values"]])
    num_tokens = int((inputs["input_ids"] == hf.config.image_token_index).sum()) // len(images)
    for g, e in zip(got, expected):
        assert g.shape[0] == num_tokens
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_merged_linear_loads_hf_shards_and_names_a_missing_one():
    from torch import nn

    from mmcore.models.weights import MergedLinear, WeightLoadError, load_named_weights

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv_proj = MergedLinear(
                4, {"q_proj": 3, "k_proj": 2, "v_proj": 2}, bias=True, dtype=torch.float32,
                device="cpu",
            )  # fmt: skip

    g = torch.Generator().manual_seed(0)
    shards = {n: (torch.randn(r, 4, generator=g), torch.randn(r, generator=g))
              for n, r in (("q_proj", 3), ("k_proj", 2), ("v_proj", 2))}  # fmt: skip
    weights = [(f"{n}.weight", w) for n, (w, _) in shards.items()]
    weights += [(f"{n}.bias", b) for n, (_, b) in shards.items()]
    block = Block()
    load_named_weights(block, weights, lambda name: name)
    x = torch.randn(5, 4, generator=g)
    want = torch.cat([x @ w.T + b for w, b in shards.values()], dim=-1)
    torch.testing.assert_close(block.qkv_proj(x), want)

    with pytest.raises(WeightLoadError, match=r"missing weights: k_proj\.weight"):
        load_named_weights(Block(), [w for w in weights if w[0] != "k_proj.weight"], lambda n: n)
    with pytest.raises(WeightLoadError, match="v_proj.weight has shape"):
        bad = [(n, t[:1]) if n == "v_proj.weight" else (n, t) for n, t in weights]
        load_named_weights(Block(), bad, lambda n: n)
