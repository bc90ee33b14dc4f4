"""mmcore's own test model with two encoders: a CLIP image tower (LLaVA projector) and a
Qwen2-Audio audio tower over one Qwen2 LM (``model_type`` ``mmcore_tiny_omni``).

No public family serves images and audio through separate towers in one prompt, so this model
is built from two HF families' parts and HF stays the oracle: the folder written by
:func:`build_tiny_omni` also holds the parts as HF checkpoints (``hf_qwen2_audio/``: the audio
tower, its projector and the LM; ``hf_vision/``: CLIP and the LLaVA projector), and
:func:`hf_omni_greedy` runs HF ``Qwen2AudioForConditionalGeneration.generate()`` with HF's
image features written into its input embeddings at the image placeholders.

Register it before building an engine on such a folder: :func:`register_tiny_omni`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import torch

from mmcore.models.clip import CLIPVisionTower
from mmcore.models.llava import LlavaMultiModalProjector, _one_image
from mmcore.models.qwen2_audio import Qwen2AudioModel
from mmcore.models.qwen2_audio.processor import Qwen2AudioMultiModalProcessor
from mmcore.multimodal.llava import LlavaMultiModalProcessor
from mmcore.multimodal.processor import MultiModalProcessor
from mmcore.testing.tiny_audio_checkpoints import build_tiny_qwen2_audio

MODEL_TYPE = "mmcore_tiny_omni"
IMAGE_TOKEN = "<image>"
IMAGE_SIZE, PATCH = 32, 8  # 16 image embeddings (CLS dropped)
_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=PATCH,
    projection_dim=32,
)


def _config_class():
    from transformers import CLIPVisionConfig, Qwen2AudioConfig

    class TinyOmniConfig(Qwen2AudioConfig):
        """Qwen2-Audio's config plus a CLIP vision config and LLaVA's projector settings."""

        model_type = MODEL_TYPE
        sub_configs = {**Qwen2AudioConfig.sub_configs, "vision_config": CLIPVisionConfig}

        def __init__(self, vision_config=None, image_token_id=None, **kwargs):
            if isinstance(vision_config, dict):
                vision_config = CLIPVisionConfig(**vision_config)
            self.vision_config = vision_config or CLIPVisionConfig(**_VISION)
            self.image_token_id = image_token_id
            self.vision_feature_layer = kwargs.pop("vision_feature_layer", -2)
            self.vision_feature_select_strategy = kwargs.pop(
                "vision_feature_select_strategy", "default"
            )
            self.projector_hidden_act = kwargs.pop("projector_hidden_act", "gelu")
            self.multimodal_projector_bias = kwargs.pop("multimodal_projector_bias", True)
            super().__init__(**kwargs)

    return TinyOmniConfig


class TinyOmniModel(Qwen2AudioModel):
    """Qwen2-Audio's audio tower, projector and LM, plus a CLIP tower and a LLaVA projector."""

    supported_modalities = ("image", "audio")
    supports_tensor_parallel = False  # a CPU test model; its TP is not tested

    def __init__(self, hf_config, *, dtype: torch.dtype, device: torch.device):
        super().__init__(hf_config, dtype=dtype, device=device)
        self.vision_tower = CLIPVisionTower(
            hf_config.vision_config,
            hf_config.vision_feature_layer,
            hf_config.vision_feature_select_strategy,
            dtype=dtype,
            device=device,
        )
        self.image_projector = LlavaMultiModalProjector(
            hf_config, self.vision_tower.output_size, dtype=dtype, device=device
        )
        self.dtype = dtype

    def _module_name(self, name: str) -> str | None:
        if name.startswith("vision_tower.") and not self.vision_tower.uses_weight(
            name[len("vision_tower.") :]
        ):
            return None  # layers past the feature layer
        return super()._module_name(name)

    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Image: projected CLIP features per image; audio: as Qwen2-Audio."""
        if modality != "image":
            return super().encode(modality, items)
        if not items:
            return []
        pixels = torch.stack([_one_image(item["pixel_values"]) for item in items])
        features = self.vision_tower(pixels.to(device=self.device, dtype=self.dtype))
        return list(self.image_projector(features).unbind(0))


class TinyOmniProcessor(MultiModalProcessor):
    """Images as LLaVA's processor makes them, audio clips as Qwen2-Audio's."""

    supported_modalities = ("image", "audio")

    def __init__(self, model_dir, hf_config, tokenizer, mm_processor_kwargs=None):
        super().__init__(model_dir, hf_config, tokenizer, mm_processor_kwargs)
        # The CLIP image processor lives in a subfolder: the top folder's preprocessor config
        # is the Whisper feature extractor.
        image_dir = os.path.join(self.model_dir, "image_processor")
        self._parts = {
            "image": LlavaMultiModalProcessor(image_dir, hf_config, tokenizer),
            "audio": Qwen2AudioMultiModalProcessor(self.model_dir, hf_config, tokenizer),
        }
        self.audio_sampling_rate = self._parts["audio"].audio_sampling_rate

    def _part(self, modality: str) -> MultiModalProcessor:
        self.check_modality(modality)
        return self._parts[modality]

    def placeholder_token_id(self, modality: str) -> int:
        return self._part(modality).placeholder_token_id(modality)

    def num_embeds(self, modality: str, item: Any, kwargs: Mapping | None = None) -> int:
        return self._part(modality).num_embeds(modality, item, kwargs)

    def num_embeds_processed(self, modality: str, data: dict) -> int:
        return self._part(modality).num_embeds_processed(modality, data)

    def process(self, modality: str, items: list, kwargs: Mapping | None = None) -> list[dict]:
        return self._part(modality).process(modality, items, kwargs)

    def dummy_items(self, modality: str, count: int, max_embeds: int | None = None) -> list:
        return self._part(modality).dummy_items(modality, count, max_embeds)


def register_tiny_omni() -> None:
    """Make ``mmcore_tiny_omni`` folders loadable (transformers' AutoConfig and mmcore)."""
    from transformers import AutoConfig

    from mmcore.multimodal.registry import register_model

    AutoConfig.register(MODEL_TYPE, _config_class(), exist_ok=True)
    register_model(MODEL_TYPE, TinyOmniModel, TinyOmniProcessor)


def build_tiny_omni(path: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny ``mmcore_tiny_omni`` checkpoint and its parts as HF checkpoints.

    Args:
        path: output folder.
        seed: torch seed of the random weights.

    Returns:
        ``str(path)``.
    """
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector as HFProjector

    path = str(path)
    audio_dir = os.path.join(path, "hf_qwen2_audio")
    build_tiny_qwen2_audio(audio_dir, seed, extra_special=(IMAGE_TOKEN,))
    for name in os.listdir(audio_dir):  # the LM, audio tower, tokenizer and feature extractor
        if os.path.isfile(os.path.join(audio_dir, name)):
            shutil.copy(os.path.join(audio_dir, name), path)
    with open(os.path.join(audio_dir, "config.json")) as f:
        config = json.load(f)
    text_hidden = config["text_config"]["hidden_size"]
    from transformers import AutoTokenizer

    image_id = AutoTokenizer.from_pretrained(audio_dir).convert_tokens_to_ids(IMAGE_TOKEN)

    vision_config = CLIPVisionConfig(**_VISION)
    torch.manual_seed(seed + 1)
    vision = CLIPVisionModel(vision_config).eval()
    llava = LlavaConfig(vision_config=vision_config, text_config={"hidden_size": text_hidden})
    projector = HFProjector(llava).eval()
    vision_dir = os.path.join(path, "hf_vision")
    vision.save_pretrained(vision_dir)
    save_file(projector.state_dict(), os.path.join(vision_dir, "projector.safetensors"))
    tensors = {f"vision_tower.{k}": v for k, v in vision.state_dict().items()}
    tensors |= {f"image_projector.{k}": v for k, v in projector.state_dict().items()}
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "vision.safetensors")
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    image_processor.save_pretrained(os.path.join(path, "image_processor"))
    image_processor.save_pretrained(vision_dir)

    config.update(
        model_type=MODEL_TYPE,
        architectures=["TinyOmniModel"],
        vision_config=vision_config.to_dict(),
        image_token_id=image_id,
        projector_hidden_act="gelu",
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path


@torch.inference_mode()
def hf_omni_greedy(
    path: str, text: str, images: list, clips: list, max_new_tokens: int
) -> tuple[list[int], list[int]]:
    """HF's greedy tokens for a prompt with ``<image>`` and audio placeholders.

    HF's Qwen2-Audio processor expands the audio placeholders; each ``<image>`` is expanded to
    its 16 tokens first, as LLaVA's processor does. HF's CLIP + LLaVA projector features replace
    those tokens' embeddings (a hook on the LM's embedding), HF's Qwen2-Audio scatters the audio.

    Returns:
        (the expanded prompt's token ids, the new token ids cut after the first EOS).
    """
    from safetensors.torch import load_file
    from transformers import (
        AutoProcessor,
        CLIPImageProcessor,
        CLIPVisionModel,
        LlavaConfig,
        Qwen2AudioForConditionalGeneration,
    )
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector as HFProjector

    audio_dir, vision_dir = os.path.join(path, "hf_qwen2_audio"), os.path.join(path, "hf_vision")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(audio_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(audio_dir)
    tokens_per_image = (IMAGE_SIZE // PATCH) ** 2
    inputs = processor(
        text=text.replace(IMAGE_TOKEN, IMAGE_TOKEN * tokens_per_image),
        audio=clips or None,
        sampling_rate=16000,
        return_tensors="pt",
    )
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    hook = None
    if images:
        vision = CLIPVisionModel.from_pretrained(vision_dir, dtype=torch.float32).eval()
        llava = LlavaConfig(
            vision_config=vision.config,
            text_config={"hidden_size": model.config.text_config.hidden_size},
        )
        projector = HFProjector(llava).eval()
        projector.load_state_dict(load_file(os.path.join(vision_dir, "projector.safetensors")))
        pixels = CLIPImageProcessor.from_pretrained(vision_dir)(images, return_tensors="pt")
        hidden = vision(pixels["pixel_values"], output_hidden_states=True).hidden_states[-2]
        features = projector(hidden[:, 1:]).reshape(-1, model.config.text_config.hidden_size)

        def put_images(module, args, output):
            mask = args[0] == image_id
            if mask.any():
                output = output.clone()
                output[mask] = features.to(output.dtype)
            return output

        hook = model.get_input_embeddings().register_forward_hook(put_images)
    try:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    finally:
        if hook is not None:
            hook.remove()
    prompt = inputs["input_ids"][0].tolist()
    new = out[0, len(prompt) :].tolist()
    eos = processor.tokenizer.eos_token_id
    return prompt, new[: new.index(eos) + 1] if eos in new else new
