"""The Transformers backend's generic processor: HF's processor settings per request, layouts
from the image size, and the inputs it refuses (Idefics3, whose layout depends on the size)."""

from __future__ import annotations

import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.testing.tiny_hf_vlms import build_tiny_idefics3

GREEDY = SamplingParams(temperature=0.0, max_tokens=4)
PROMPT = "User: <image>Describe the picture.\nAssistant:"


@pytest.fixture(scope="module")
def idefics3(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = build_tiny_idefics3(tmp_path_factory.mktemp("idefics3"))
    hf = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    return model_dir, Engine(model_dir), hf, AutoProcessor.from_pretrained(model_dir)


def _hf(hf, processor, image, **kwargs):
    inputs = processor(text=PROMPT, images=[image], return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=4, do_sample=False)
    return inputs["input_ids"][0].tolist(), out[0, inputs["input_ids"].shape[1] :].tolist()


def test_per_request_processor_settings_match_hf(idefics3, photos):
    _, engine, hf, processor = idefics3
    image = photos["chelsea"]
    split_ids, split_tokens = _hf(hf, processor, image)
    whole_ids, whole_tokens = _hf(hf, processor, image, do_image_splitting=False)
    assert len(whole_ids) < len(split_ids)  # one tile instead of a grid + global tile
    plain = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
    unsplit = dict(plain, mm_processor_kwargs={"do_image_splitting": False})
    processed = [engine.inputs.process(p) for p in (plain, unsplit)]
    assert processed[0].token_ids.tolist() == split_ids
    assert processed[1].token_ids.tolist() == whole_ids
    assert processed[0].items[0].identifier != processed[1].items[0].identifier
    outputs = engine.generate([plain, unsplit], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [split_tokens, whole_tokens]


def test_embedding_count_from_size_equals_hf_image_tokens(idefics3, photos):
    _, engine, hf, processor = idefics3
    for name in ("astronaut", "rocket_tall", "coffee_wide"):
        ids, _ = _hf(hf, processor, photos[name])
        count = engine.processor.num_embeds("image", photos[name])
        assert count == ids.count(hf.config.image_token_id)


def test_unknown_setting_and_preprocessed_inputs_refused(idefics3, photos):
    _, engine, _, _ = idefics3
    image = photos["astronaut"]
    with pytest.raises(ValueError, match="not_a_setting.*known"):
        engine.generate(
            {
                "prompt": PROMPT,
                "multi_modal_data": {"image": image},
                "mm_processor_kwargs": {"not_a_setting": 1},
            },
            GREEDY,
            use_tqdm=False,
        )
    pixels = {"pixel_values": torch.zeros(1, 5, 3, 32, 32)}
    with pytest.raises(ValueError, match="not preprocessed pixel_values"):
        engine.generate({"prompt": PROMPT, "multi_modal_data": {"image": pixels}}, GREEDY)
    embeds = {"image_embeds": torch.zeros(80, 64)}
    with pytest.raises(ValueError, match="not image_embeds"):
        engine.generate({"prompt": PROMPT, "multi_modal_data": {"image": embeds}}, GREEDY)
    assert engine.stats()["kv_blocks_used"] == 0


def test_items_of_equal_shapes_encode_in_one_call_like_alone(idefics3, photos):
    _, engine, _, _ = idefics3
    images = [photos["astronaut"], photos["camera"], photos["coffee_wide"]]  # 2 equal shapes
    data = engine.processor.process("image", images)
    assert data[0]["pixel_values"].shape == data[1]["pixel_values"].shape
    assert data[0]["pixel_values"].shape != data[2]["pixel_values"].shape
    together = engine.model.encode("image", data)
    alone = [engine.model.encode("image", [d])[0] for d in data]
    for got, ref, image in zip(together, alone, images):
        assert got.shape[0] == engine.processor.num_embeds("image", image)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
