"""Qwen2-VL / Qwen2.5-VL: token-for-token parity with HF transformers' greedy generate().

Images go through HF's image processor on the HF side. HF's video processor needs torchvision
(absent here), so HF's model runs on the ``pixel_values_videos`` mmcore's processor made; the
processors themselves are compared on the GPU machine (tests/python/test_qwen2_vl_hf_processor.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.models.qwen2_vl.processor import expand_image_patches
from mmcore.multimodal.video import load_video
from mmcore.testing.qwen2_vl_oracle import hf_greedy, hf_inputs, hf_rope_index

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"


def _user(body: str) -> str:
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


def _clip(photo, num_frames: int, size=(40, 24)) -> np.ndarray:
    """Frames panning across a photo (T, H, W, 3)."""
    frame = np.asarray(photo.resize((size[0] + 4 * num_frames, size[1])))
    return np.stack([frame[:, 4 * i : 4 * i + size[0]] for i in range(num_frames)])


def _prompts(photos) -> list[tuple[str, list, list]]:
    """12 prompts: text only, 1-2 images of different sizes/aspects, odd/even-frame videos,
    images and videos mixed in both orders."""
    a, c, k = photos["astronaut"], photos["chelsea"], photos["coffee"]
    tall, wide = photos["rocket_tall"], photos["coffee_wide"]
    odd, even = _clip(a, 5), _clip(k, 4, size=(32, 32))
    return [
        (_user("hello there, how are you?"), [], []),
        (_user(f"{IMG}What is this?"), [a], []),
        (_user(f"{IMG} and {IMG} compare them"), [c, wide], []),
        (_user(f"{VID}What happens?"), [], [odd]),
        (_user(f"Describe {VID}"), [], [even]),
        (_user(f"{IMG}then{VID}both"), [tall], [odd]),
        (_user(f"{VID}first, then {IMG}"), [k], [even]),
        (_user("tell me a story about a cat on a warm blanket"), [], []),
        (_user(f"{IMG}{IMG}{VID} all"), [a, c], [even]),
        (_user(f"{IMG}Again?"), [a], []),
        (_user(f"{VID}{VID} two clips"), [], [even, odd]),
        (_user(f"A long question about the picture, with many words in it: {IMG}"), [tall], []),
    ]


def _engine_prompt(text, images, videos):
    data = {}
    if images:
        data["image"] = images
    if videos:
        data["video"] = videos
    return {"prompt": text, "multi_modal_data": data} if data else text


def _hf_case(model_dir, processor, text, images, videos):
    processed = [processor.process("video", [load_video(v)])[0] for v in videos]
    return hf_inputs(model_dir, text, images, processed)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def case(request, photos):
    model_dir = request.getfixturevalue(f"tiny_{request.param}_dir")
    engine = Engine(model_dir, seed=0)
    prompts = _prompts(photos)
    hf = [_hf_case(model_dir, engine.processor, *p) for p in prompts]
    expected = [hf_greedy(model_dir, inputs, MAX_TOKENS) for inputs in hf]
    return model_dir, engine, prompts, hf, expected


def _ids(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def _run(engine, prompts, params=GREEDY):
    return _ids(engine.generate([_engine_prompt(*p) for p in prompts], params, use_tqdm=False))


def test_batched_greedy_matches_hf(case):
    _, engine, prompts, _, expected = case
    assert _run(engine, prompts) == expected
    assert engine.stats()["kv_blocks_used"] == 0


def test_mrope_positions_equal_hf_get_rope_index(case):
    model_dir, engine, prompts, hf, _ = case
    for prompt, inputs in zip(prompts, hf):
        processed = engine.inputs.process(_engine_prompt(*prompt))
        assert processed.token_ids.tolist() == inputs["input_ids"][0].tolist()
        positions, delta = hf_rope_index(model_dir, inputs)
        if "image_grid_thw" in inputs or "video_grid_thw" in inputs:
            assert np.array_equal(processed.mrope.positions, positions.numpy())
            assert processed.mrope.delta == delta
        else:  # HF's text-only positions: 0..L-1 in all rows
            assert np.array_equal(processed.mrope.positions[0], np.arange(len(processed.token_ids)))
            assert processed.mrope.delta == 0


def test_image_embeddings_equal_hf(case):
    model_dir, engine, prompts, hf, _ = case
    from mmcore.testing.qwen2_vl_oracle import load_hf_qwen

    model, _, _ = load_hf_qwen(model_dir)
    inputs = hf[2]  # two images of different aspect ratios
    processed = engine.inputs.process(_engine_prompt(*prompts[2]))
    # mmcore's processor = HF's image processor, patch for patch (one frame each, expanded)
    tower = engine.model.visual
    pixels = torch.cat([it.data["pixel_values"] for it in processed.items])
    assert pixels.shape[1] * tower.temporal == inputs["pixel_values"].shape[1]
    expanded = expand_image_patches(pixels, tower.temporal, tower.patch_dim)
    torch.testing.assert_close(expanded, inputs["pixel_values"], rtol=0, atol=1e-6)
    with torch.no_grad():
        ref = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]
        ).pooler_output
        got = engine.model.encode("image", [it.data for it in processed.items])
    torch.testing.assert_close(torch.cat(got), torch.cat(list(ref)), rtol=1e-4, atol=1e-5)


def test_prefix_cache_hits_keep_parity(case):
    model_dir, _, prompts, _, expected = case
    engine = Engine(model_dir, enable_prefix_caching=True, block_size=8)
    first = _run(engine, prompts)
    hits_before = engine.stats()["prefix_hits"]
    second = _run(engine, prompts)
    assert engine.stats()["prefix_hits"] > hits_before
    assert first == expected and second == expected


VIDEO_PROMPTS = [3, 4, 5, 6]  # chunking is slow on CPU: the prompts with videos


def test_chunked_prefill_inside_video_ranges_keeps_parity(case):
    model_dir, _, prompts, _, expected = case
    engine = Engine(model_dir, max_num_batched_tokens=20, enable_prefix_caching=False)
    chosen = [prompts[i] for i in VIDEO_PROMPTS]
    assert _run(engine, chosen) == [expected[i] for i in VIDEO_PROMPTS]


def test_preemption_keeps_parity(case):
    model_dir, engine, prompts, _, expected = case
    block_bytes = kv_bytes_per_block(engine.model, 16, torch.float32)
    small = Engine(model_dir, kv_cache_memory_bytes=24 * block_bytes, block_size=16)
    assert _run(small, prompts) == expected
    assert small.stats()["num_preemptions"] > 0


def test_async_scheduling_keeps_parity(case):
    model_dir, _, prompts, _, expected = case
    engine = Engine(model_dir, async_scheduling=True)
    assert _run(engine, prompts) == expected
    assert engine.stats()["overlapped_steps"] > 0


def test_chat_with_image_and_video_parts_matches_hf(case, photos):
    model_dir, engine, prompts, hf, expected = case
    text, images, videos = prompts[5]  # image then video
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": images[0]},
                {"type": "text", "text": "then"},
                {"type": "video", "video": videos[0]},
                {"type": "text", "text": "both"},
            ],
        }
    ]
    out = engine.chat(messages, GREEDY, use_tqdm=False)
    assert out[0].prompt_token_ids == hf[5]["input_ids"][0].tolist()
    assert out[0].outputs[0].token_ids == expected[5]
