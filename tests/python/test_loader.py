"""model_loader: both HF key layouts, sharded checkpoints, dtype cast, dummy weights, clear errors."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmcore.model_loader import load_model
from mmcore.models.weights import WeightLoadError
from mmcore.testing.oracle import load_hf

_NON_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _copy_without_weights(src: str, dst) -> str:
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name not in _NON_WEIGHT_FILES:
            shutil.copy(os.path.join(src, name), dst)
    return str(dst)


def _transformers5_layout(name: str) -> str:
    """Published LLaVA key -> the key layout transformers 5 models use in memory."""
    for old, new in (
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
        ("image_newline", "model.image_newline"),
    ):
        if name.startswith(old):
            return new + name[len(old) :]
    raise AssertionError(f"unexpected key {name}")


def _published_vision_layout(name: str) -> str:
    """``vision_tower.X`` -> ``vision_tower.vision_model.X`` (published LLaVA-1.5 checkpoints)."""
    if name.startswith("vision_tower."):
        return "vision_tower.vision_model." + name[len("vision_tower.") :]
    return name


def _rewrite(src: str, dst, rename=lambda n: n, num_shards: int = 1, drop=(), extra=None) -> str:
    out = _copy_without_weights(src, dst)
    tensors = {rename(k): v for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
    for name in drop:
        del tensors[name]
    tensors.update(extra or {})
    if num_shards == 1:
        save_file(tensors, os.path.join(out, "model.safetensors"))
        return out
    names = sorted(tensors)
    weight_map = {}
    for i in range(num_shards):
        shard = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = names[i::num_shards]
        save_file({n: tensors[n] for n in part}, os.path.join(out, shard))
        weight_map.update(dict.fromkeys(part, shard))
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return out


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference_state(tiny_llava_next_dir):
    model, _ = load_model(tiny_llava_next_dir, dtype=torch.float32, device="cpu")
    return _state(model)


@pytest.mark.parametrize(
    "layout", ["transformers5", "published_vision_model", "sharded_transformers5"]
)
def test_key_layouts_load_identical_tensors(tmp_path, tiny_llava_next_dir, reference_state, layout):
    rename = (
        _published_vision_layout if layout == "published_vision_model" else _transformers5_layout
    )
    shards = 3 if layout.startswith("sharded") else 1
    model_dir = _rewrite(tiny_llava_next_dir, tmp_path / layout, rename, num_shards=shards)
    model, _ = load_model(model_dir, dtype=torch.float32, device="cpu")
    state = _state(model)
    assert state.keys() == reference_state.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, reference_state[name]), name


def test_hf_reads_the_rewritten_layouts_alike(tmp_path, tiny_llava_dir):
    """The layouts the loader accepts are real: HF loads them to the same weights."""
    base, _ = load_hf(tiny_llava_dir)
    for rename in (_transformers5_layout, _published_vision_layout):
        other, _ = load_hf(_rewrite(tiny_llava_dir, tmp_path / rename.__name__, rename))
        for (name, a), (_, b) in zip(base.state_dict().items(), other.state_dict().items()):
            assert torch.equal(a, b), name


def test_dtype_cast(tiny_llava_dir):
    fp32, _ = load_model(tiny_llava_dir, dtype=torch.float32, device="cpu")
    bf16, _ = load_model(tiny_llava_dir, dtype=torch.bfloat16, device="cpu")
    for (name, a), (_, b) in zip(fp32.named_parameters(), bf16.named_parameters()):
        assert b.dtype == torch.bfloat16, name
        assert torch.equal(a.to(torch.bfloat16), b), name
    assert not any(p.requires_grad for p in bf16.parameters())


def test_dummy_weights_are_seeded_and_need_no_weight_files(tmp_path, tiny_llava_next_dir):
    model_dir = _copy_without_weights(tiny_llava_next_dir, tmp_path / "config_only")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(model_dir, dtype=torch.float32, device="cpu")
    a, _ = load_model(model_dir, dtype=torch.float32, device="cpu", load_format="dummy")
    b, _ = load_model(model_dir, dtype=torch.float32, device="cpu", load_format="dummy")
    c, _ = load_model(model_dir, dtype=torch.float32, device="cpu", load_format="dummy", seed=1)
    state_a, state_b, state_c = _state(a), _state(b), _state(c)
    for name, tensor in state_a.items():
        assert torch.isfinite(tensor).all(), name
        assert torch.equal(tensor, state_b[name]), name
    proj = state_a["language_model.model.layers.0.self_attn.qkv_proj.weight"]
    assert 0.015 < proj.std().item() < 0.025
    assert not torch.equal(proj, state_c["language_model.model.layers.0.self_attn.qkv_proj.weight"])
    assert torch.equal(state_a["language_model.model.norm.weight"], torch.ones(64))
    # a dummy model runs end to end
    from mmcore.testing.paged import PagedKVCache

    cache = PagedKVCache(a, num_blocks=8, block_size=4, dtype=torch.float32, device="cpu")
    attn, pos = cache.step([(0, 0, 5)])
    with torch.no_grad():
        logits = a.compute_logits(a(a.embed_tokens(torch.arange(5)), pos, cache.kv_caches, attn))
    assert logits.shape == (5, a.vocab_size) and torch.isfinite(logits).all()


def test_missing_weight_is_named(tmp_path, tiny_llava_dir):
    gone = "language_model.model.layers.1.mlp.up_proj.weight"
    model_dir = _rewrite(tiny_llava_dir, tmp_path / "missing", drop=[gone])
    with pytest.raises(
        WeightLoadError, match=r"missing weights: .*layers\.1\.mlp\.up_proj\.weight"
    ):
        load_model(model_dir, dtype=torch.float32, device="cpu")


def test_unexpected_weight_is_named(tmp_path, tiny_llava_dir):
    extra = {"language_model.model.layers.0.self_attn.bogus.weight": torch.zeros(2)}
    model_dir = _rewrite(tiny_llava_dir, tmp_path / "unexpected", extra=extra)
    with pytest.raises(ValueError, match=r"unexpected weights: .*self_attn\.bogus\.weight"):
        load_model(model_dir, dtype=torch.float32, device="cpu")


def test_wrong_shape_is_named(tmp_path, tiny_llava_dir):
    name = "multi_modal_projector.linear_2.bias"
    model_dir = _rewrite(
        tiny_llava_dir, tmp_path / "shape", drop=[name], extra={name: torch.zeros(3)}
    )
    with pytest.raises(ValueError, match=r"linear_2\.bias has shape \(3,\)"):
        load_model(model_dir, dtype=torch.float32, device="cpu")


def test_unused_vision_layers_are_skipped_not_loaded(tiny_llava_dir):
    model, config = load_model(tiny_llava_dir, dtype=torch.float32, device="cpu")
    # feature layer -2 of 3 CLIP layers: the last layer and post_layernorm never run
    assert len(model.vision_tower.encoder.layers) == config.vision_config.num_hidden_layers - 1
    assert not any("post_layernorm" in n for n, _ in model.named_parameters())


def test_bad_format_and_unknown_model_type(tmp_path, tiny_llava_dir):
    with pytest.raises(ValueError, match="load_format"):
        load_model(tiny_llava_dir, dtype=torch.float32, device="cpu", load_format="pickle")
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="'gpt2' has no native mmcore implementation.*llava"):
        load_model(str(tmp_path / "gpt2"), dtype=torch.float32, device="cpu", model_impl="mmcore")


def test_tied_embeddings_follow_the_top_level_config(tmp_path, tiny_llava_dir):
    """With tie_word_embeddings the head is the embedding matrix (HF saves no lm_head then)."""
    model_dir = _rewrite(tiny_llava_dir, tmp_path / "tied", drop=["language_model.lm_head.weight"])
    config_path = os.path.join(model_dir, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["tie_word_embeddings"] = True
    with open(config_path, "w") as f:
        json.dump(config, f)
    hf, hf_processor = load_hf(model_dir)
    model, _ = load_model(model_dir, dtype=torch.float32, device="cpu")
    assert not hasattr(model.language_model, "lm_head")
    ids = hf_processor.tokenizer("The cat sleeps on a warm blanket", return_tensors="pt")[
        "input_ids"
    ]
    from mmcore.testing.paged import PagedKVCache

    cache = PagedKVCache(model, num_blocks=16, block_size=4, dtype=torch.float32, device="cpu")
    attn, pos = cache.step([(0, 0, ids.shape[1])])
    with torch.no_grad():
        want = hf(input_ids=ids).logits[0]
        got = model.compute_logits(model(model.embed_tokens(ids[0]), pos, cache.kv_caches, attn))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
