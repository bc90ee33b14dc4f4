"""HF transformers as the oracle for InternVL without HF's combined processor.

transformers' ``InternVLProcessor`` cannot be built without torchvision (its video processor).
Here the HF side is HF's image processor (tiling on, as ``InternVLProcessor`` calls it) for
images and, for videos, the frames mmcore's processor made; the prompt is expanded with the
strings ``InternVLProcessor`` (transformers 5.24) puts in place of each ``<IMG_CONTEXT>`` /
``<video>`` and tokenized whole, as it does. ``bench/check_internvl_hf_processor.py`` compares
the processors themselves on a machine with torchvision.
"""

from __future__ import annotations

import functools
import re

import torch

IMAGE, VIDEO = "<IMG_CONTEXT>", "<video>"


@functools.lru_cache(maxsize=4)
def load_hf_internvl(model_dir: str):
    """(HF model, float32 CPU, eval; HF image processor; tokenizer) for a checkpoint folder."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    return (
        model,
        AutoImageProcessor.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
    )


def expand_prompt(text: str, image_tiles: list[int], video_frames: list[int], per_tile: int):
    """``text`` with the i-th image and video placeholders replaced as HF's processor does."""
    images, videos = iter(image_tiles), iter(video_frames)

    def tile_span(count: int) -> str:
        return "<img>" + IMAGE * (per_tile * count) + "</img>"

    def replace(match: re.Match) -> str:
        if match.group(0) == IMAGE:
            return tile_span(next(images))
        return "\n".join(f"Frame{i + 1}: {tile_span(1)}" for i in range(next(videos)))

    pattern = f"{re.escape(IMAGE)}|{re.escape(VIDEO)}"
    expanded = re.sub(pattern, replace, text)
    if next(images, None) is not None or next(videos, None) is not None:
        raise ValueError("more items than placeholders in the prompt")
    return expanded


def _float_tiles(item: dict) -> torch.Tensor:
    """mmcore's processed item (uint8 tiles + mean/std) as HF's normalized float tiles."""
    from mmcore.models.internvl.tiling import normalize_tiles

    pixels = item["pixel_values"]
    if pixels.dtype != torch.uint8:
        return pixels
    return normalize_tiles(pixels, item["image_mean"], item["image_std"])


def hf_inputs(
    model_dir: str, text: str, images: list, videos: list[dict], image_kwargs: dict | None = None
) -> dict:
    """The inputs HF's model takes for one prompt.

    Args:
        model_dir: the checkpoint.
        text: prompt with one ``<IMG_CONTEXT>`` per image and one ``<video>`` per video.
        images: PIL images, tiled by HF's image processor.
        videos: per video, mmcore's processed dict (``pixel_values`` ``[frames, 3, S, S]``,
            uint8 with ``image_mean`` / ``image_std``, or float).
        image_kwargs: extra HF image processor arguments (``max_patches``, ``min_patches``).
    """
    model, image_processor, tokenizer = load_hf_internvl(model_dir)
    tiles, counts = {}, []
    if images:
        out = image_processor(
            images=images, crop_to_patches=True, return_tensors="pt", **(image_kwargs or {})
        )
        counts = out["num_patches"].tolist()
        tiles["image"] = list(out["pixel_values"].split(counts))
    tiles["video"] = [_float_tiles(v) for v in videos]
    order = re.findall(f"{re.escape(IMAGE)}|{re.escape(VIDEO)}", text)
    streams = {IMAGE: iter(tiles.get("image", [])), VIDEO: iter(tiles["video"])}
    pixels = [next(streams[kind]) for kind in order]  # HF concatenates in prompt order
    frames = [v["pixel_values"].shape[0] for v in videos]
    expanded = expand_prompt(text, counts, frames, model.config.image_seq_length)
    ids = tokenizer(expanded, return_tensors="pt")
    inputs = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
    if pixels:
        inputs["pixel_values"] = torch.cat(pixels)
    return inputs


@torch.inference_mode()
def hf_greedy(model_dir: str, inputs: dict, max_new_tokens: int) -> list[int]:
    """New token ids of HF greedy ``generate()``, cut after the first EOS."""
    model, _, _ = load_hf_internvl(model_dir)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, tok in enumerate(new):
        if tok in eos:
            return new[: i + 1]
    return new
