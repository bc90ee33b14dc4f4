"""HF transformers as the oracle: load the reference model and build mmcore inputs alike."""

from __future__ import annotations

import torch


def load_hf(model_dir: str):
    """(HF model in eval mode, float32, CPU; its AutoProcessor) for a checkpoint folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(model_dir)


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
