"""Transformers backend refusals: architectures it cannot run fail at start-up, naming the model
type and the reason, before any weight is read; bad model_impl values are refused."""

from __future__ import annotations

import json

import pytest

from mmcore import Engine
from mmcore.models.transformers_backend import refusal_reason


def _checkpoint(path, config) -> str:
    """A config + tokenizer folder (no weights: refusals come before any weight is read)."""
    from mmcore.testing.tiny_checkpoints import build_tokenizer

    config.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return str(path)


def _gemma3_config():
    from transformers import Gemma3Config

    return Gemma3Config(
        text_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        ),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2),
    )


def test_gemma3_bidirectional_image_spans_refused(tmp_path):
    path = _checkpoint(tmp_path, _gemma3_config())
    with pytest.raises(ValueError, match="'gemma3'.*bidirectionally within each image"):
        Engine(path, load_format="dummy", model_impl="transformers")  # native code serves "auto"


def test_hybrid_convolution_layers_refused(tmp_path):
    from transformers import Lfm2Config

    config = Lfm2Config(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        layer_types=["conv", "full_attention"],
    )
    path = _checkpoint(tmp_path, config)
    with pytest.raises(ValueError, match=r"'lfm2'.*layers of type \['conv'\]"):
        Engine(path, load_format="dummy", model_impl="transformers")


def test_encoder_decoder_refused(tmp_path):
    from transformers import T5Config

    config = T5Config(vocab_size=320, d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16)
    path = _checkpoint(tmp_path, config)
    with pytest.raises(ValueError, match="'t5'.*encoder-decoder"):
        Engine(path, load_format="dummy")


def test_remote_code_only_architecture_refused(tmp_path):
    from transformers import LlamaConfig

    path = _checkpoint(tmp_path, LlamaConfig(vocab_size=320, hidden_size=32))
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    config.update(model_type="my_remote_vlm", auto_map={"AutoConfig": "modeling.MyConfig"})
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="'my_remote_vlm' needs its own remote code"):
        Engine(path, load_format="dummy", model_impl="transformers", trust_remote_code=True)


def test_softcapped_attention_refused():
    from transformers import Gemma2Config

    reason = refusal_reason(Gemma2Config(attn_logit_softcapping=50.0))
    assert reason is not None and "soft-caps attention logits" in reason


def test_model_impl_mmcore_without_native_code_refused(tmp_path):
    from transformers import PaliGemmaConfig

    path = _checkpoint(tmp_path, PaliGemmaConfig())
    with pytest.raises(ValueError, match="no native mmcore implementation"):
        Engine(path, load_format="dummy", model_impl="mmcore")


def test_unknown_model_impl_refused(tiny_llava_dir):
    with pytest.raises(ValueError, match="model_impl"):
        Engine(tiny_llava_dir, model_impl="vllm")
