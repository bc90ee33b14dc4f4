"""Processors: embedding counts from sizes alone agree with HF; tensors; registry; errors."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

import mmcore
from mmcore import _core
from mmcore.multimodal import (
    MultiModalProcessor,
    anyres,
    get_model_class,
    get_processor_class,
    register_model,
    supported_model_types,
)
from mmcore.multimodal.processor import image_size

# (height, width): squares, extreme aspect ratios both ways, odd sizes, tiny and large
SIZES = [
    (32, 32),
    (64, 64),
    (10, 300),
    (300, 10),
    (33, 65),
    (65, 33),
    (100, 37),
    (240, 320),
    (427, 60),
    (40, 300),
    (17, 23),
    (999, 1000),
    (63, 32),
    (31, 64),
    (90, 20),
    (50, 40),
    (7, 200),
]


def _processors(model_dir):
    hf = AutoProcessor.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    ours = get_processor_class(config.model_type)(model_dir, config, hf.tokenizer, None)
    return hf, ours, config


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return _processors(tiny_llava_dir)


@pytest.fixture(scope="module")
def llava_next(tiny_llava_next_dir):
    return _processors(tiny_llava_next_dir)


def _hf_token_count(hf, image) -> int:
    ids = hf(text="<image>", images=[image], return_tensors="pt")["input_ids"]
    return int((ids == hf.image_token_id).sum())


@pytest.mark.parametrize("which", ["llava", "llava_next"])
def test_num_embeds_equals_hf_token_count(request, which):
    hf, ours, _ = request.getfixturevalue(which)
    for height, width in SIZES:
        image = Image.new("RGB", (width, height), (10, 200, 30))
        assert ours.num_embeds("image", image) == _hf_token_count(hf, image), (height, width)


def test_anyres_formula_matches_hf_on_many_sizes(llava_next):
    hf, ours, config = llava_next
    rng = random.Random(0)
    sizes = [(rng.randint(1, 2000), rng.randint(1, 2000)) for _ in range(1500)]
    sizes += [(rng.randint(1, 80), rng.randint(1, 80)) for _ in range(500)]
    expected = hf._get_num_multimodal_tokens(image_sizes=sizes)["num_image_tokens"]
    tile = config.vision_config.image_size
    for (h, w), want in zip(sizes, expected):
        assert ours.num_image_embeds(h, w) == want, (h, w)
        assert anyres.select_best_resolution(h, w, config.image_grid_pinpoints) == tuple(
            hf_select_best_resolution((h, w), config.image_grid_pinpoints)
        )
        assert anyres.num_tiles(
            h, w, config.image_grid_pinpoints, tile
        ) == image_size_to_num_patches((h, w), config.image_grid_pinpoints, tile)


def test_anyres_with_published_pinpoints():
    """LLaVA-v1.6 geometry (336px tiles, 14px patches) against HF's formula."""
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    hf = LlavaNextProcessor.__new__(LlavaNextProcessor)
    hf.patch_size, hf.num_additional_image_tokens = 14, 1
    hf.image_processor = type("P", (), {"image_grid_pinpoints": pinpoints})()
    rng = random.Random(1)
    for _ in range(300):
        h, w = rng.randint(50, 3000), rng.randint(50, 3000)
        want = hf._get_number_of_features(h, w, 336, 336) - 1  # "default" drops CLS
        assert anyres.num_embeds(h, w, pinpoints, 336, 14) == want, (h, w)


def test_llava_process_matches_hf_image_processor(llava, photos):
    hf, ours, _ = llava
    images = [photos["astronaut"], photos["coffee_wide"], np.asarray(photos["chelsea"])]
    items = ours.process("image", images)
    want = hf.image_processor(images=images, return_tensors="pt")["pixel_values"]
    assert len(items) == 3
    for item, expected in zip(items, want):
        assert set(item) == {"pixel_values"}
        torch.testing.assert_close(item["pixel_values"], expected)


def test_llava_next_process_gives_each_item_its_own_tiles(llava_next, photos):
    hf, ours, config = llava_next
    images = [photos["rocket_tall"], photos["astronaut"], photos["coffee_wide"]]
    items = ours.process("image", images)
    want = hf.image_processor(images=images, return_tensors="pt")
    for item, pixels, size, image in zip(items, want["pixel_values"], want["image_sizes"], images):
        h, w = image_size(image)
        tiles = anyres.num_tiles(h, w, config.image_grid_pinpoints, config.vision_config.image_size)
        assert item["pixel_values"].shape == (tiles, 3, 32, 32)
        torch.testing.assert_close(item["pixel_values"], pixels[:tiles])
        assert item["image_sizes"].tolist() == [h, w] == size.tolist()


@pytest.mark.parametrize("which", ["llava", "llava_next"])
def test_dummy_items_have_the_most_embeddings(request, which):
    _, ours, _ = request.getfixturevalue(which)
    dummies = ours.dummy_items("image", 3)
    assert len(dummies) == 3
    most = ours.num_embeds("image", dummies[0])
    assert all(ours.num_embeds("image", d) == most for d in dummies)
    assert all(ours.num_image_embeds(h, w) <= most for h, w in SIZES)
    assert len(ours.process("image", dummies[:1])) == 1


@pytest.mark.parametrize("which", ["llava", "llava_next"])
def test_placeholders(request, which, monkeypatch):
    hf, ours, config = request.getfixturevalue(which)
    assert ours.supported_modalities == ("image",)
    assert ours.placeholder_text("image") == "<image>"
    assert ours.placeholder_token_id("image") == config.image_token_index == hf.image_token_id
    assert ours.embeds_hidden_size == config.text_config.hidden_size
    with pytest.raises(ValueError, match="does not accept audio"):
        ours.placeholder_token_id("audio")

    made = []

    def fake_item(modality, identifier, token_id, num_embeds):  # the core's type may not be built
        made.append((modality, identifier, token_id, num_embeds))
        return made[-1]

    monkeypatch.setattr(_core, "PlaceholderItem", fake_item, raising=False)
    ours.placeholder_item("image", "abc", 17)
    assert made == [(_core.Modality.IMAGE, "abc", config.image_token_index, 17)]


def test_image_size_reads_pil_numpy_and_torch():
    assert image_size(Image.new("RGB", (40, 30))) == (30, 40)
    assert image_size(np.zeros((30, 40, 3), np.uint8)) == (30, 40)
    assert image_size(np.zeros((30, 40), np.uint8)) == (30, 40)
    assert image_size(np.zeros((3, 30, 40), np.float32)) == (30, 40)
    assert image_size(torch.zeros(3, 30, 40)) == (30, 40)
    with pytest.raises(TypeError, match="str"):
        image_size("picture.png")


def test_nonpositive_size_is_rejected(llava_next):
    with pytest.raises(ValueError, match="positive"):
        llava_next[1].num_image_embeds(0, 10)


def test_mismatched_processor_config_is_rejected(tiny_llava_next_dir):
    hf = AutoProcessor.from_pretrained(tiny_llava_next_dir)
    config = AutoConfig.from_pretrained(tiny_llava_next_dir)
    cls = get_processor_class("llava_next")
    with pytest.raises(ValueError, match="pinpoints"):
        cls(tiny_llava_next_dir, config, hf.tokenizer, {"image_grid_pinpoints": [[64, 64]]})
    with pytest.raises(ValueError, match="vision tower"):
        cls(tiny_llava_next_dir, config, hf.tokenizer, {"crop_size": {"height": 64, "width": 64}})


def test_registry_builtins_and_custom_models():
    assert {"llava", "llava_next"} <= set(supported_model_types())
    assert get_model_class("llava_next").__name__ == "LlavaNextModel"
    assert issubclass(get_processor_class("llava"), MultiModalProcessor)
    with pytest.raises(ValueError, match="'nope' is not supported"):
        get_model_class("nope")

    class MyModel:
        pass

    class MyProcessor(MultiModalProcessor):
        pass

    assert mmcore.register_model is register_model
    mmcore.register_model("my_test_family", MyModel, MyProcessor)
    assert get_model_class("my_test_family") is MyModel
    assert get_processor_class("my_test_family") is MyProcessor
    with pytest.raises(TypeError):
        register_model("bad", MyModel(), MyProcessor)
