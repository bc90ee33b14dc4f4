"""Hugging Face transformers as the correctness oracle: greedy generate() on one prompt."""

from __future__ import annotations

import functools

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor


@functools.lru_cache(maxsize=4)
def hf_model_and_processor(model_dir: str):
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor


def hf_inputs(model_dir: str, prompt: str, images: list):
    _, processor = hf_model_and_processor(model_dir)
    return processor(text=prompt, images=images or None, return_tensors="pt")


@torch.inference_mode()
def hf_greedy(model_dir: str, prompt: str, images: list, max_new_tokens: int) -> list[int]:
    """New token ids of HF greedy generation, cut after the first EOS (inclusive)."""
    model, processor = hf_model_and_processor(model_dir)
    inputs = hf_inputs(model_dir, prompt, images)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, tok in enumerate(new):
        if tok in eos:
            return new[: i + 1]
    return new


@torch.inference_mode()
def hf_image_embeds(model_dir: str, image) -> torch.Tensor:
    """The projected embeddings HF's LM consumes for one image ([num_embeds, hidden])."""
    model, _ = hf_model_and_processor(model_dir)
    inputs = hf_inputs(model_dir, "<image>", [image])
    kwargs = {"pixel_values": inputs["pixel_values"]}
    if "image_sizes" in inputs:
        kwargs["image_sizes"] = inputs["image_sizes"]
    features = model.get_image_features(**kwargs)
    features = getattr(features, "pooler_output", features)
    if isinstance(features, (list, tuple)):
        features = features[0]
    return features.reshape(-1, features.shape[-1])
