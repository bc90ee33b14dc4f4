"""Token-for-token parity of Engine.generate with HF transformers' greedy generate()."""

from __future__ import annotations

import pytest

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.testing.oracle import cached_hf, hf_greedy, hf_image_embeds

MAX_TOKENS = 8
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)


def _prompts(photos):
    """Ten prompts with 0, 1 and 2 images of different sizes and aspect ratios."""
    a, c, k = photos["astronaut"], photos["chelsea"], photos["coffee"]
    cam, rocket = photos["camera"], photos["rocket"]
    return [
        ("USER: hello there, how are you?\nASSISTANT:", []),
        ("USER: <image>\nWhat is this?\nASSISTANT:", [a]),
        ("USER: <image>\nDescribe the cat.\nASSISTANT:", [c]),
        ("USER: <image> and <image>\nCompare them.\nASSISTANT:", [k, cam]),
        ("USER: tell me a story about a dog\nASSISTANT:", []),
        ("USER: <image>\nWhat colour?\nASSISTANT:", [rocket]),
        ("USER: first <image> then <image> done\nASSISTANT:", [c, a]),
        (
            "USER: <image>\nA long question about the picture, with many words in it.\nASSISTANT:",
            [cam],
        ),
        ("USER: <image>\nAgain?\nASSISTANT:", [a]),
        ("USER: <image><image>\nTwo.\nASSISTANT:", [rocket, k]),
    ]


def _engine_prompts(prompts):
    return [
        {"prompt": p, "multi_modal_data": {"image": imgs}} if imgs else p for p, imgs in prompts
    ]


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def model_case(request, tiny_llava_dir, tiny_llava_next_dir, photos):
    model_dir = tiny_llava_dir if request.param == "llava" else tiny_llava_next_dir
    prompts = _prompts(photos)
    expected = [hf_greedy(model_dir, p, imgs, MAX_TOKENS) for p, imgs in prompts]
    return model_dir, prompts, expected


def _token_ids(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_batched_greedy_matches_hf(model_case):
    model_dir, prompts, expected = model_case
    engine = Engine(model_dir, seed=0)
    outputs = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    assert _token_ids(outputs) == expected
    assert engine.stats()["kv_blocks_used"] == 0


def test_prefix_cache_hits_keep_parity(model_case):
    model_dir, prompts, expected = model_case
    engine = Engine(model_dir, enable_prefix_caching=True)
    first = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    hits_before = engine.stats()["prefix_hits"]
    second = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    assert engine.stats()["prefix_hits"] > hits_before
    assert _token_ids(first) == expected
    assert _token_ids(second) == expected


def test_chunked_prefill_inside_image_ranges_keeps_parity(model_case):
    model_dir, prompts, expected = model_case
    engine = Engine(model_dir, max_num_batched_tokens=7, enable_prefix_caching=False)
    outputs = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    assert _token_ids(outputs) == expected


def test_preemption_keeps_parity(model_case):
    model_dir, prompts, expected = model_case
    probe = Engine(model_dir)
    outputs = probe.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    longest = max(len(o.prompt_token_ids) for o in outputs)
    block_bytes = kv_bytes_per_block(probe.model, 16, probe.config.dtype)
    # Room for the longest request and a little more, filled by small chunks of many requests:
    # running requests run out of blocks and the newest must be preempted.
    blocks = -(-(longest + MAX_TOKENS) // 16) + 2
    engine = Engine(
        model_dir,
        kv_cache_memory_bytes=blocks * block_bytes,
        max_num_batched_tokens=48,
        enable_prefix_caching=False,
    )
    outputs = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    assert engine.stats()["num_preemptions"] > 0
    assert _token_ids(outputs) == expected


def test_image_embeds_input_matches_hf(model_case, photos):
    model_dir, prompts, expected = model_case
    engine = Engine(model_dir)
    prompt, images = prompts[1]
    embeds = hf_image_embeds(model_dir, images[0])
    out = engine.generate(
        {"prompt": prompt, "multi_modal_data": {"image": {"image_embeds": embeds}}},
        GREEDY,
        use_tqdm=False,
    )
    assert out[0].outputs[0].token_ids == expected[1]


def test_chat_matches_hf_chat_template(model_case, photos):
    model_dir, _, _ = model_case
    _, processor = cached_hf(model_dir)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": photos["chelsea"]},
                {"type": "text", "text": "What animal is this?"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = hf_greedy(model_dir, text, [photos["chelsea"]], MAX_TOKENS)
    engine = Engine(model_dir)
    out = engine.chat(messages, GREEDY, use_tqdm=False)
    assert out[0].outputs[0].token_ids == expected
