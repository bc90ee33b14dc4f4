"""HF transformers as the oracle for Gemma 3: ``Gemma3Processor`` + ``generate()``.

HF's processor expands ``<start_of_image>`` and marks image tokens in ``token_type_ids``,
which switches on the bidirectional mask inside each image in HF's model.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=4)
def load_hf_gemma3(model_dir: str):
    """(HF ``Gemma3ForConditionalGeneration`` float32 CPU eval, HF ``Gemma3Processor``)."""
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval(), AutoProcessor.from_pretrained(model_dir)


def hf_inputs(model_dir: str, text: str, images: list, *, pan_and_scan: bool = False) -> dict:
    """HF processor output for one prompt (one ``<start_of_image>`` per image in ``text``).

    Args:
        pan_and_scan: add pan-and-scan crops. ``Gemma3Processor.__call__`` (transformers 5.24)
            does not pass ``do_pan_and_scan`` on to its image processor, so the inputs are then
            built from HF's image processor and HF's ``replace_image_token`` text.
    """
    _, processor = load_hf_gemma3(model_dir)
    if not pan_and_scan:
        kwargs = {"images": [images]} if images else {}
        return dict(processor(text=[text], return_tensors="pt", add_special_tokens=False, **kwargs))
    pixels = processor.image_processor(images=images, do_pan_and_scan=True, return_tensors="pt")
    pieces = text.split(processor.boi_token)
    expanded = pieces[0]
    for index, piece in enumerate(pieces[1:]):
        expanded += processor.replace_image_token(dict(pixels), index) + piece
    ids = processor.tokenizer(expanded, add_special_tokens=False, return_tensors="pt")["input_ids"]
    image_id = processor.tokenizer.image_token_id
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": (ids == image_id).long(),
        "pixel_values": pixels["pixel_values"],
    }


def hf_greedy(model_dir: str, inputs: dict, max_new_tokens: int) -> list[int]:
    """Greedy tokens HF generates after the prompt (EOS included if produced)."""
    model, _ = load_hf_gemma3(model_dir)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, top_k=None
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()
