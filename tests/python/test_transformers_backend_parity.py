"""Transformers backend: VLM families without native mmcore code give HF generate()'s greedy
tokens, batched, with prefix caching, chunked prefill cutting through images and preemption.

Each family is a tiny seeded checkpoint built from its HF config (mmcore.testing.tiny_hf_vlms);
the oracle is the HF model run on HF's own processor output.
"""

from __future__ import annotations

import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.testing import tiny_hf_vlms

MAX_TOKENS = 5
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
FAMILIES = ["idefics3", "aya_vision", "deepseek_vl", "vipllava", "janus"]


def _prompts(image_text: str, photos) -> list[tuple[str, list]]:
    """Text only, one image, two images of other sizes and aspect ratios."""
    a, c, tall, wide = (photos[k] for k in ("astronaut", "chelsea", "rocket_tall", "coffee_wide"))
    user = "User: {}\nAssistant:".format
    return [
        (user("hello there, what is on the table?"), []),
        (user(f"{image_text}Describe the picture."), [a]),
        (user(f"{image_text} and {image_text} compare them"), [c, wide]),
        (user("tell me about the cat on a warm blanket"), []),
        (user(f"A question about this photo: {image_text}"), [tall]),
        (user(f"{image_text}{image_text} both"), [wide, a]),
    ]


def _engine_prompt(text: str, images: list):
    return {"prompt": text, "multi_modal_data": {"image": images}} if images else text


def _run(engine, prompts) -> list[list[int]]:
    outputs = engine.generate([_engine_prompt(*p) for p in prompts], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory, photos):
    """(model dir, engine, prompts, HF prompt ids, HF greedy tokens) of one family."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = request.param
    model_dir = getattr(tiny_hf_vlms, f"build_tiny_{name}")(tmp_path_factory.mktemp(name))
    processor = AutoProcessor.from_pretrained(model_dir)
    hf_model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    prompts = _prompts(processor.image_token, photos)
    hf_ids, expected = [], []
    for text, images in prompts:
        inputs = processor(text=text, images=images or None, return_tensors="pt")
        with torch.no_grad():
            out = hf_model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        prompt_len = inputs["input_ids"].shape[1]
        hf_ids.append(inputs["input_ids"][0].tolist())
        expected.append(out[0, prompt_len:].tolist())
    engine = Engine(model_dir, seed=0)
    return model_dir, engine, prompts, hf_ids, expected


def test_auto_picks_the_transformers_backend(family):
    _, engine, *_ = family
    assert type(engine.model).__name__ == "TransformersModel"
    assert type(engine.processor).__name__ == "TransformersMultiModalProcessor"


def test_prompt_ids_equal_hf_processor(family):
    _, engine, prompts, hf_ids, _ = family
    for prompt, ids in zip(prompts, hf_ids):
        assert engine.inputs.process(_engine_prompt(*prompt)).token_ids.tolist() == ids


def test_batched_greedy_matches_hf(family):
    _, engine, prompts, _, expected = family
    assert len({tuple(e) for e in expected}) > 1  # the oracle is not degenerate
    assert _run(engine, prompts) == expected
    assert engine.stats()["kv_blocks_used"] == 0


def test_prefix_cache_hits_keep_parity(family):
    _, engine, prompts, _, expected = family
    hits_before = engine.stats()["prefix_hits"]
    assert _run(engine, prompts) == expected
    assert engine.stats()["prefix_hits"] > hits_before


def test_chunked_prefill_through_images_keeps_parity(family):
    model_dir, _, prompts, hf_ids, expected = family
    engine = Engine(model_dir, max_num_batched_tokens=16, enable_prefix_caching=False)
    chosen = [i for i, (_, images) in enumerate(prompts) if images][:2]
    assert all(len(hf_ids[i]) > 16 for i in chosen)  # every image prompt spans several steps
    assert _run(engine, [prompts[i] for i in chosen]) == [expected[i] for i in chosen]


def test_preemption_keeps_parity(family):
    model_dir, engine, prompts, hf_ids, expected = family
    block_size = 4  # small blocks: decoding crosses block boundaries in every request
    longest = max(len(ids) for ids in hf_ids) + MAX_TOKENS
    blocks = -(-longest // block_size) + 2  # room for the longest request alone
    block_bytes = kv_bytes_per_block(engine.model, block_size, torch.float32)
    small = Engine(
        model_dir,
        kv_cache_memory_bytes=blocks * block_bytes,
        block_size=block_size,
        max_num_batched_tokens=32,  # chunks: running prefills keep asking for blocks
        enable_prefix_caching=False,
    )
    assert _run(small, prompts) == expected
    assert small.stats()["num_preemptions"] > 0
