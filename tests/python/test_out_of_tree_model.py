"""A user registers an out-of-tree model type (config, model and processor) and serves it."""

import json
import shutil

from transformers import AutoConfig, LlavaConfig

import mmcore
from mmcore import Engine, SamplingParams
from mmcore.models.llava import LlavaModel
from mmcore.multimodal.llava import LlavaMultiModalProcessor


class MyLlavaConfig(LlavaConfig):
    model_type = "my_llava"


class MyLlavaModel(LlavaModel):
    encode_calls = 0

    def encode(self, modality, items):
        MyLlavaModel.encode_calls += 1
        return super().encode(modality, items)


class MyLlavaProcessor(LlavaMultiModalProcessor):
    pass


def test_registered_model_type_runs_end_to_end(tiny_llava_dir, tmp_path, photos):
    AutoConfig.register("my_llava", MyLlavaConfig, exist_ok=True)
    mmcore.register_model("my_llava", MyLlavaModel, MyLlavaProcessor)
    custom_dir = tmp_path / "my_llava"
    shutil.copytree(tiny_llava_dir, custom_dir)
    config_path = custom_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = "my_llava"
    config_path.write_text(json.dumps(config))

    prompt = {
        "prompt": "USER: <image>\nWhat is this?\nASSISTANT:",
        "multi_modal_data": {"image": photos["coffee"]},
    }
    params = SamplingParams(temperature=0.0, max_tokens=8)
    custom = Engine(str(custom_dir))
    assert isinstance(custom.model, MyLlavaModel)
    assert isinstance(custom.processor, MyLlavaProcessor)
    got = custom.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    assert MyLlavaModel.encode_calls >= 1
    expected = (
        Engine(tiny_llava_dir).generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    )
    assert got == expected
