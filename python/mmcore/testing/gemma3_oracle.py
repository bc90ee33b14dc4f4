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


def hf_inputs(model_dir: str, text: str, images: list, **images_kwargs) -> dict:
    """HF processor output for one prompt (one ``<start_of_image>`` per image in ``text``).

    Args:
        images_kwargs: image processor settings, e.g. ``do_pan_and_scan=True``.
    """
    _, processor = load_hf_gemma3(model_dir)
    kwargs = {"images": [images]} if images else {}
    return dict(
        processor(
            text=[text], return_tensors="pt", add_special_tokens=False, **kwargs, **images_kwargs
        )
    )


def hf_greedy(model_dir: str, inputs: dict, max_new_tokens: int) -> list[int]:
    """Greedy tokens HF generates after the prompt (EOS included if produced)."""
    model, _ = load_hf_gemma3(model_dir)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, top_k=None
        )
    return out[0, inputs["input_ids"].shape[1] :].tolist()
