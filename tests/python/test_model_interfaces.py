"""The model/processor seam: contract checks, per-request processor settings, media per modality."""

from __future__ import annotations

import pytest
import torch

from mmcore import Engine
from mmcore.models.interfaces import check_model, supports_mrope, supports_multimodal


class _Incomplete(torch.nn.Module):
    supported_modalities = ("image",)
    num_layers = 1

    def encode(self, modality, items):
        return []


def test_check_model_names_missing_members():
    with pytest.raises(TypeError, match=r"load_weights.*forward.*num_kv_heads.*adding_a_model"):
        check_model(_Incomplete())
    assert supports_multimodal(_Incomplete) and not supports_mrope(_Incomplete)


@pytest.fixture(scope="module")
def llava_engine(tiny_llava_dir):
    return Engine(tiny_llava_dir, mm_processor_kwargs={"image_mean": [0.5, 0.5, 0.5]})


def test_per_request_settings_change_the_item_and_unknown_keys_fail(llava_engine, photos):
    prompt = {
        "prompt": "USER: <image>\nhi ASSISTANT:",
        "multi_modal_data": {"image": photos["chelsea"]},
    }
    base = llava_engine.inputs.process(prompt)
    tuned = llava_engine.inputs.process(
        {**prompt, "mm_processor_kwargs": {"image_std": [1.0, 1.0, 1.0]}}
    )
    assert base.items[0].identifier != tuned.items[0].identifier
    assert not torch.equal(base.items[0].data["pixel_values"], tuned.items[0].data["pixel_values"])
    with pytest.raises(ValueError, match=r"\['max_pixels'\] are not known.*known: \["):
        llava_engine.inputs.process({**prompt, "mm_processor_kwargs": {"max_pixels": 10}})
    with pytest.raises(ValueError, match="image_std"):  # a bad value: HF's check, as ValueError
        llava_engine.inputs.process({**prompt, "mm_processor_kwargs": {"image_std": "wide"}})
    with pytest.raises(ValueError, match="crop_size"):  # geometry: engine-wide only
        llava_engine.inputs.process({**prompt, "mm_processor_kwargs": {"crop_size": 16}})


def test_unknown_construction_setting_fails(tiny_llava_dir):
    with pytest.raises(ValueError, match=r"\['fps'\] are not known"):
        Engine(tiny_llava_dir, mm_processor_kwargs={"fps": 2})


def test_modality_the_model_lacks_is_refused_before_loading(llava_engine):
    with pytest.raises(ValueError, match="does not accept video"):
        llava_engine.inputs.process(
            {"prompt": "USER: hi", "multi_modal_data": {"video": b"not even decoded"}}
        )
