"""HF transformers as the oracle: load the reference model and build mmcore inputs alike."""

from __future__ import annotations

import functools

import torch


def load_hf(model_dir: str):
    """(HF model in eval mode, float32, CPU; its AutoProcessor) for a checkpoint folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(model_dir)


def load_hf_and_mmcore(model_dir: str):
    """The HF oracle and mmcore's own model and processor for one checkpoint, float32 on CPU.

    Returns:
        (HF model, HF processor, mmcore model, mmcore processor, mmcore model config).
    """
    from mmcore.model_loader import load_model
    from mmcore.multimodal import get_processor_class

    hf, hf_processor = load_hf(model_dir)
    model, config = load_model(model_dir, dtype=torch.float32, device="cpu")
    processor = get_processor_class(config.model_type)(
        model_dir, config, hf_processor.tokenizer, None
    )
    return hf, hf_processor, model, processor, config


def hf_image_features(hf_model, inputs) -> list[torch.Tensor]:
    """Projected image embeddings per image from HF ``get_image_features``."""
    kwargs = {"pixel_values": inputs["pixel_values"]}
    if "image_sizes" in inputs:
        kwargs["image_sizes"] = inputs["image_sizes"]
    with torch.no_grad():
        return list(hf_model.model.get_image_features(**kwargs).pooler_output)


def scatter_embeds(
    model, input_ids: torch.Tensor, image_token_id: int, image_embeds: list[torch.Tensor]
) -> torch.Tensor:
    """Token embeddings with the images' embeddings written at the placeholder positions.

    Args:
        model: an mmcore model.
        input_ids: ``[L]`` expanded prompt (one placeholder token per embedding).
        image_token_id: the placeholder token id.
        image_embeds: per image ``[num_embeds, hidden]``, in prompt order.

    Raises:
        ValueError: when the placeholder count differs from the number of embeddings.
    """
    embeds = model.embed_tokens(input_ids)
    mask = input_ids == image_token_id
    rows = torch.cat(image_embeds) if image_embeds else embeds[:0]
    if int(mask.sum()) != rows.shape[0]:
        raise ValueError(f"{int(mask.sum())} placeholders but {rows.shape[0]} image embeddings")
    embeds[mask] = rows.to(embeds.dtype)
    return embeds


@functools.lru_cache(maxsize=4)
def cached_hf(model_dir: str):
    """``load_hf`` memoised per folder (tests reuse one reference model)."""
    return load_hf(model_dir)


def hf_inputs(model_dir: str, prompt: str, images: list):
    """The HF processor's tensors for one prompt with its images."""
    _, processor = cached_hf(model_dir)
    return processor(text=prompt, images=images or None, return_tensors="pt")


@torch.inference_mode()
def hf_greedy(model_dir: str, prompt: str, images: list, max_new_tokens: int) -> list[int]:
    """New token ids of HF greedy ``generate()`` on one prompt, cut after the first EOS."""
    model, _ = cached_hf(model_dir)
    inputs = hf_inputs(model_dir, prompt, images)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, tok in enumerate(new):
        if tok in eos:
            return new[: i + 1]
    return new


def hf_image_embeds(model_dir: str, image) -> torch.Tensor:
    """The projected embeddings HF's LM consumes for one image, ``[num_embeds, hidden]``."""
    model, _ = cached_hf(model_dir)
    return hf_image_features(model, hf_inputs(model_dir, "<image>", [image]))[0]
