"""Weightless checkpoints of real architectures: configs, tokenizer size, processor sizes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoTokenizer

from mmcore.multimodal.registry import get_model_class, get_processor_class
from mmcore.testing.dummy_checkpoint import write_dummy_checkpoint

# name -> (LM KV heads, embeddings of a 336x336 image, of a 672x672 image, params in billions)
EXPECTED = {
    "llava-1.5-7b": (32, 576, 576, 7.05),
    "llava-next-mistral-7b": (8, 1176, 2928, 7.55),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dummy_checkpoint_has_real_shapes(name, tmp_path):
    kv_heads, embeds_336, embeds_672, billions = EXPECTED[name]
    path = write_dummy_checkpoint(name, tmp_path / name)
    config = AutoConfig.from_pretrained(path)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (4096, 32, 32064)
    assert text.num_key_value_heads == kv_heads
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (336, 14, 1024)
    assert config.vision_feature_layer == -2
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == 32002
    assert tokenizer.convert_tokens_to_ids("<image>") == config.image_token_id == 32000
    processor = get_processor_class(config.model_type)(path, config, tokenizer, None)
    assert processor.num_embeds("image", Image.new("RGB", (336, 336))) == embeds_336
    assert processor.num_embeds("image", Image.new("RGB", (672, 672))) == embeds_672
    model = get_model_class(config.model_type)(config, dtype=torch.bfloat16, device="meta")
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert params == pytest.approx(billions, abs=0.01)


def test_unknown_architecture_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown architecture"):
        write_dummy_checkpoint("llava-70b", tmp_path)


# name -> (LM layers, KV heads, tied head, embeddings of a 1280x720 image, params in billions)
EXPECTED_QWEN = {
    "qwen2-vl-7b-instruct": (28, 4, False, 1196, 8.29),
    "qwen2.5-vl-3b-instruct": (36, 2, True, 1196, 3.75),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_QWEN))
def test_qwen_dummy_checkpoint_has_real_shapes(name, tmp_path):
    layers, kv_heads, tied, embeds_720p, billions = EXPECTED_QWEN[name]
    path = write_dummy_checkpoint(name, tmp_path / name)
    config = AutoConfig.from_pretrained(path)
    text = config.get_text_config()
    assert (text.num_hidden_layers, text.num_key_value_heads) == (layers, kv_heads)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == config.image_token_id == 151655
    assert tokenizer.convert_tokens_to_ids("<|video_pad|>") == config.video_token_id == 151656
    processor = get_processor_class(config.model_type)(path, config, tokenizer, None)
    assert processor.num_embeds("image", Image.new("RGB", (1280, 720))) == embeds_720p
    model = get_model_class(config.model_type)(config, dtype=torch.bfloat16, device="meta")
    assert model.language_model.tie_word_embeddings == tied
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert params == pytest.approx(billions, abs=0.01)


def test_internvl3_8b_dummy_checkpoint_has_real_shapes(tmp_path):
    from transformers import InternVLForConditionalGeneration

    path = write_dummy_checkpoint("internvl3-8b", tmp_path / "internvl3-8b")
    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") == config.image_token_id == 151667
    processor = get_processor_class(config.model_type)(path, config, tokenizer, None)
    # 448x448: 1 tile; 896x448: a 2x1 grid + thumbnail; 4:3 picks the 4x3 grid of 12 + thumbnail
    for size, tiles in (((448, 448), 1), ((896, 448), 3), ((640, 480), 13)):
        assert processor.num_embeds("image", Image.new("RGB", size)) == 256 * tiles
    model = get_model_class(config.model_type)(config, dtype=torch.bfloat16, device="meta")
    with torch.device("meta"):
        hf = InternVLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    ours = sum(p.numel() for p in model.parameters())
    assert ours == sum(p.numel() for p in hf.parameters())
    assert ours / 1e9 == pytest.approx(7.94, abs=0.01)


def test_idefics3_8b_dummy_checkpoint_has_real_shapes(tmp_path):
    """Config, tokenizer ids and processor of HuggingFaceM4/Idefics3-8B-Llama3 load with the
    Auto classes; the processor expands one image into 169 embeddings per 364 px tile."""
    from transformers import AutoProcessor

    from mmcore.models.transformers_backend.model import hf_model_class
    from mmcore.models.transformers_backend.processor import TransformersMultiModalProcessor

    path = write_dummy_checkpoint("idefics3-8b", tmp_path / "idefics3-8b")
    config = AutoConfig.from_pretrained(path)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (4096, 32, 8)
    assert text.rope_parameters["rope_theta"] == 500000.0 and text.vocab_size == 128259
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size) == (1152, 27, 364)
    processor = AutoProcessor.from_pretrained(path)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 128259 and tokenizer.pad_token_id == 128002
    specials = ["<|begin_of_text|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [128000, 128256, 128257, 128258]
    assert config.image_token_id == 128257 and processor.image_seq_len == 169
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    prompt = processor.apply_chat_template(turn, add_generation_prompt=True)
    assert prompt == "<|begin_of_text|>User:<image>Hi<end_of_utterance>\nAssistant:"
    # 364x364 is upscaled to 1456 px: a 4x4 grid of tiles + the global image; 728x364 2x4 + 1.
    for size, tiles in (((364, 364), 17), ((728, 364), 9)):
        ids = processor(text=prompt, images=[Image.new("RGB", size)], add_special_tokens=False)
        assert ids["input_ids"][0].count(128257) == 169 * tiles
    backend = TransformersMultiModalProcessor(path, config, tokenizer)
    assert backend.num_embeds("image", Image.new("RGB", (364, 364))) == 169 * 17
    with torch.device("meta"):
        model = hf_model_class(config)._from_config(config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(8.46, abs=0.01)


def test_config_overrides_shrink_idefics3_only(tmp_path):
    with pytest.raises(ValueError, match="idefics3 only"):
        write_dummy_checkpoint("llava-1.5-7b", tmp_path / "llava", overrides={"dtype": "float32"})
