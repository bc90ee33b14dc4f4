"""HF transformers as the oracle for Qwen2-VL / Qwen2.5-VL without HF's combined processor.

transformers' ``Qwen2VLProcessor`` needs torchvision (its video processor); without it, the HF
side here is built from HF's image processor for images and, for videos, from the tensors
mmcore's processor made (the model then runs on the same ``pixel_values_videos``). Prompts are
text with one ``<|image_pad|>`` / ``<|video_pad|>`` per item, expanded as HF's processor does.
"""

from __future__ import annotations

import functools

import torch

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


@functools.lru_cache(maxsize=4)
def load_hf_qwen(model_dir: str):
    """(HF model, float32 CPU, eval; HF image processor; tokenizer) for a checkpoint folder."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    return (
        model,
        AutoImageProcessor.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
    )


def _expand(text: str, tokenizer, counts: dict[str, list[int]]) -> list[int]:
    """Token ids of ``text`` with the i-th pad of each kind repeated ``counts[kind][i]`` times."""
    for pad, key in ((IMAGE_PAD, "image"), (VIDEO_PAD, "video")):
        pieces = text.split(pad)
        if len(pieces) - 1 != len(counts[key]):
            raise ValueError(f"{len(pieces) - 1} {pad} in the prompt for {len(counts[key])} items")
        text = pieces[0] + "".join(pad * n + piece for n, piece in zip(counts[key], pieces[1:]))
    return tokenizer(text)["input_ids"]


def hf_inputs(model_dir: str, text: str, images: list, videos: list[dict]) -> dict:
    """The inputs HF's model takes for one prompt.

    Args:
        model_dir: the checkpoint.
        text: prompt with one pad token per item.
        images: PIL images, processed by HF's image processor.
        videos: per video, mmcore's processed dict (``pixel_values_videos``,
            ``video_grid_thw``, ``second_per_grid_ts``).
    """
    model, image_processor, tokenizer = load_hf_qwen(model_dir)
    merge = model.config.vision_config.spatial_merge_size**2
    inputs: dict = {}
    image_counts, video_counts = [], []
    if images:
        out = image_processor(images=images, return_tensors="pt")
        inputs["pixel_values"], inputs["image_grid_thw"] = (
            out["pixel_values"],
            out["image_grid_thw"],
        )
        image_counts = (out["image_grid_thw"].prod(-1) // merge).tolist()
    if videos:
        inputs["pixel_values_videos"] = torch.cat([v["pixel_values_videos"] for v in videos])
        inputs["video_grid_thw"] = torch.stack([v["video_grid_thw"].reshape(3) for v in videos])
        video_counts = (inputs["video_grid_thw"].prod(-1) // merge).tolist()
        if model.config.model_type == "qwen2_5_vl":
            inputs["second_per_grid_ts"] = torch.stack(
                [v["second_per_grid_ts"].reshape(()) for v in videos]
            )
    ids = torch.tensor([_expand(text, tokenizer, {"image": image_counts, "video": video_counts})])
    types = torch.zeros_like(ids, dtype=torch.int32)
    types[ids == model.config.image_token_id] = 1
    types[ids == model.config.video_token_id] = 2
    inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types)
    return inputs


@torch.inference_mode()
def hf_rope_index(model_dir: str, inputs: dict) -> tuple[torch.Tensor, int]:
    """HF ``get_rope_index`` of one prompt: (positions ``[3, L]``, delta)."""
    model, _, _ = load_hf_qwen(model_dir)
    positions, deltas = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        **(
            {"second_per_grid_ts": inputs["second_per_grid_ts"]}
            if "second_per_grid_ts" in inputs
            else {}
        ),
    )
    return positions[:, 0], int(deltas.reshape(-1)[0])


@torch.inference_mode()
def hf_greedy(model_dir: str, inputs: dict, max_new_tokens: int) -> list[int]:
    """New token ids of HF greedy ``generate()``, cut after the first EOS."""
    model, _, _ = load_hf_qwen(model_dir)
    model.model.rope_deltas = None  # a cached delta of the previous prompt must not leak
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, tok in enumerate(new):
        if tok in eos:
            return new[: i + 1]
    return new
