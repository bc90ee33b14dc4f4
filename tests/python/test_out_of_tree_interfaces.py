"""A model family written only against models/interfaces.py and docs/adding_a_model.md.

"my_vlm" is not a transformers model: a CLIP tower, a single linear projector (LLaVA has a
2-layer MLP) and a Llama LM, saved under its own key names. The test registers its config with
transformers and the family with mmcore, and checks greedy tokens against the same modules run
by HF (CLIP + linear + LlamaForCausalLM.generate on the merged embeddings).
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoConfig,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
)

import mmcore
from mmcore import Engine, SamplingParams
from mmcore.layers.attention import AttentionMetadata
from mmcore.models.clip import CLIPVisionTower
from mmcore.models.interfaces import MultiModalModel, check_model
from mmcore.models.llama import LlamaForCausalLM as MMLlama
from mmcore.models.weights import load_named_weights
from mmcore.multimodal.processor import MultiModalProcessor, image_size
from mmcore.testing.tiny_checkpoints import IMAGE_TOKEN, LM_HEAD_SCALE, build_tokenizer

SIDE, PATCH = 32, 8
NUM_EMBEDS = (SIDE // PATCH) ** 2


class MyVlmConfig(PretrainedConfig):
    model_type = "my_vlm"
    sub_configs = {"vision_config": CLIPVisionConfig, "text_config": LlamaConfig}

    def __init__(self, vision_config=None, text_config=None, image_token_id=0, **kwargs):
        if isinstance(vision_config, dict):
            vision_config = CLIPVisionConfig(**vision_config)
        if isinstance(text_config, dict):
            text_config = LlamaConfig(**text_config)
        self.vision_config, self.text_config = vision_config, text_config
        self.image_token_id = image_token_id
        super().__init__(**kwargs)


class MyVlm(nn.Module):
    """The model contract (MultiModalModel): CLIP -> Linear -> Llama."""

    supported_modalities = ("image",)

    def __init__(self, hf_config, *, dtype, device):
        super().__init__()
        vision, text = hf_config.vision_config, hf_config.text_config
        self.vision = CLIPVisionTower(vision, -1, "default", dtype=dtype, device=device)
        self.projector = nn.Linear(vision.hidden_size, text.hidden_size, dtype=dtype, device=device)
        self.lm = MMLlama(text, dtype=dtype, device=device)
        self.num_layers, self.num_kv_heads = self.lm.num_layers, self.lm.num_kv_heads
        self.head_dim, self.hidden_size = self.lm.head_dim, self.lm.hidden_size
        self.vocab_size = self.lm.vocab_size

    def load_weights(self, weights):
        unused = ("vision.post_layernorm.", "vision.embeddings.position_ids")
        load_named_weights(self, weights, lambda n: None if n.startswith(unused) else n)

    def encode(self, modality, items):
        pixels = torch.stack([item["pixel_values"] for item in items])
        return list(self.projector(self.vision(pixels)).unbind(0))

    def embed_tokens(self, input_ids):
        return self.lm.embed_tokens(input_ids)

    def forward(self, inputs_embeds, positions, kv_caches, attn: AttentionMetadata):
        return self.lm(inputs_embeds, positions, kv_caches, attn)

    def compute_logits(self, hidden):
        return self.lm.compute_logits(hidden)


class MyVlmProcessor(MultiModalProcessor):
    """The processor contract: one ``<image>`` per image, a fixed embedding count."""

    supported_modalities = ("image",)

    def __init__(self, model_dir, hf_config, tokenizer, mm_processor_kwargs=None):
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        self.image_processor = CLIPImageProcessor.from_pretrained(model_dir)

    def placeholder_token_id(self, modality):
        self.check_modality(modality)
        return self.hf_config.image_token_id

    def num_embeds(self, modality, item, kwargs=None):
        self.check_modality(modality)
        if min(image_size(item)) < 1:
            raise ValueError("empty image")
        return NUM_EMBEDS

    def process(self, modality, items, kwargs=None):
        pixels = self.image_processor(images=items, return_tensors="pt")["pixel_values"]
        return [{"pixel_values": p} for p in pixels]

    def dummy_items(self, modality, count, max_embeds=None):
        from PIL import Image

        return [Image.new("RGB", (SIDE, SIDE), (128, 128, 128)) for _ in range(count)]


def _write_checkpoint(path) -> tuple[CLIPVisionModel, nn.Linear, LlamaForCausalLM]:
    tok = build_tokenizer()
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=SIDE, patch_size=PATCH, hidden_act="quick_gelu",
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    config = MyVlmConfig(vision_config=vision, text_config=text, image_token_id=image_id)
    config.eos_token_id = tok.eos_token_id
    torch.manual_seed(0)
    hf_vision, projector = CLIPVisionModel(vision).eval(), nn.Linear(32, 64)
    hf_lm = LlamaForCausalLM(text).eval()
    with torch.no_grad():
        hf_lm.lm_head.weight.mul_(LM_HEAD_SCALE)
    tensors = {
        f"vision.{k.removeprefix('vision_model.')}": v for k, v in hf_vision.state_dict().items()
    }
    tensors |= {f"projector.{k}": v for k, v in projector.state_dict().items()}
    tensors |= {f"lm.{k}": v for k, v in hf_lm.state_dict().items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    config.save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}
    ).save_pretrained(path)
    return hf_vision, projector, hf_lm


@torch.no_grad()
def _hf_greedy(modules, path, prompt_ids, image, max_new_tokens):
    hf_vision, projector, hf_lm = modules
    pixels = CLIPImageProcessor.from_pretrained(path)(images=[image], return_tensors="pt")
    features = hf_vision(pixels["pixel_values"], output_hidden_states=True).hidden_states[-1]
    ids = torch.tensor([prompt_ids])
    embeds = hf_lm.get_input_embeddings()(ids)
    image_token_id = AutoConfig.from_pretrained(path).image_token_id
    embeds[ids == image_token_id] = projector(features[:, 1:])[0]
    out = hf_lm.generate(
        inputs_embeds=embeds, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
        do_sample=False,
    )  # fmt: skip
    return out[0].tolist()


def test_family_written_against_the_interfaces_runs_end_to_end(tmp_path, photos):
    AutoConfig.register("my_vlm", MyVlmConfig, exist_ok=True)
    mmcore.register_model("my_vlm", MyVlm, MyVlmProcessor)
    modules = _write_checkpoint(tmp_path)
    engine = Engine(str(tmp_path), seed=0)
    assert isinstance(engine.model, MultiModalModel)
    check_model(engine.model)
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    prompts = [
        {
            "prompt": "USER: <image>\nWhat is this?\nASSISTANT:",
            "multi_modal_data": {"image": photos[name]},
        }
        for name in ("astronaut", "coffee", "rocket")
    ]
    outputs = engine.generate(prompts, params, use_tqdm=False)
    for prompt, output in zip(prompts, outputs):
        image = prompt["multi_modal_data"]["image"]
        expected = _hf_greedy(modules, tmp_path, output.prompt_token_ids, image, 6)
        assert output.outputs[0].token_ids == expected
    assert outputs[0].outputs[0].token_ids != outputs[1].outputs[0].token_ids  # images matter
