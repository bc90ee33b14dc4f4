"""Qwen2-VL bad inputs: each a ValueError naming the problem, and the engine serves on."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmcore import Engine, SamplingParams
from mmcore.multimodal.video import encode_video

VID = "<|vision_start|><|video_pad|><|vision_end|>"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
PARAMS = SamplingParams(temperature=0.0, max_tokens=3)


def _frames(n: int, height: int = 32, width: int = 48) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def _video(frames, **kwargs) -> dict:
    return {"prompt": f"{VID}what?", "multi_modal_data": {"video": frames}, **kwargs}


def _image(image, **kwargs) -> dict:
    return {"prompt": f"{IMG}what?", "multi_modal_data": {"image": image}, **kwargs}


@pytest.fixture(scope="module")
def engine(tiny_qwen2_5_vl_dir):
    return Engine(tiny_qwen2_5_vl_dir, max_model_len=256, seed=0)


BAD = {
    "zero_frames": (_video(np.zeros((0, 32, 32, 3), np.uint8)), "0 frames"),
    "frames_without_channels": (_video(np.zeros((4, 32, 32), np.uint8)), r"\(T, H, W, 3\)"),
    "float_frames": (_video(np.zeros((4, 32, 32, 3), np.float32)), "uint8"),
    "undecodable_file": (_video(b"\x00\x01 definitely not an mp4 " * 20), "could not be decoded"),
    "min_above_max_pixels": (
        _image(
            Image.new("RGB", (64, 64)), mm_processor_kwargs={"min_pixels": 4096, "max_pixels": 256}
        ),
        "min_pixels",
    ),
    "image_below_one_merged_patch": (
        _image(Image.new("RGB", (5, 40))),
        "smaller than one merged patch",
    ),
    "video_longer_than_max_model_len": (
        _video(_frames(60)),
        "longer than the maximum prompt length",
    ),
    "video_past_the_model_positions": (
        _video(_frames(8), mm_processor_kwargs={"fps": 0.01}),
        "beyond the model's 1024 positions",
    ),
    "bad_fps_setting": (
        _image(Image.new("RGB", (64, 64)), mm_processor_kwargs={"fps": {"a": 1}}),
        "fps must be a positive number",
    ),
    "unknown_processor_kwarg": (
        _image(Image.new("RGB", (64, 64)), mm_processor_kwargs={"crop": 1}),
        "crop",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_a_value_error_and_the_engine_serves_on(engine, name):
    prompt, match = BAD[name]
    with pytest.raises(ValueError, match=match):
        engine.generate(prompt, PARAMS, use_tqdm=False)
    good = engine.generate(_video(_frames(3)), PARAMS, use_tqdm=False)
    assert len(good[0].outputs[0].token_ids) == 3
    assert engine.stats()["kv_blocks_used"] == 0


def test_bad_construction_settings_are_refused(tiny_qwen2_5_vl_dir):
    with pytest.raises(ValueError, match="min_pixels"):
        Engine(tiny_qwen2_5_vl_dir, mm_processor_kwargs={"min_pixels": 4096, "max_pixels": 256})
    with pytest.raises(ValueError, match=r"\['resolution'\] are not known"):
        Engine(tiny_qwen2_5_vl_dir, mm_processor_kwargs={"resolution": 4})


def test_video_file_sampling_settings_per_request(engine):
    clip = encode_video(_frames(12, 32, 32), fps=4)  # 3 s
    two_fps = engine.inputs.process(_video(clip))  # default: 2 fps -> 6 frames -> 3 x t
    four_fps = engine.inputs.process(_video(clip, mm_processor_kwargs={"fps": 4}))
    fixed = engine.inputs.process(_video(clip, mm_processor_kwargs={"num_frames": 4}))
    grids = [p.items[0].data["video_grid_thw"][0].item() for p in (two_fps, four_fps, fixed)]
    assert grids == [3, 6, 2]
    assert two_fps.items[0].identifier != four_fps.items[0].identifier


def test_processed_video_items_are_taken_and_checked(engine):
    frames = _frames(4)
    raw = engine.generate(_video(frames), PARAMS, use_tqdm=False)[0]
    data = engine.inputs.process(_video(frames)).items[0].data
    given = engine.generate(_video(dict(data)), PARAMS, use_tqdm=False)[0]
    assert given.prompt_token_ids == raw.prompt_token_ids
    assert given.outputs[0].token_ids == raw.outputs[0].token_ids
    broken = {**data, "pixel_values_videos": data["pixel_values_videos"][:-1]}
    with pytest.raises(ValueError, match="pixel_values_videos must be"):
        engine.generate(_video(broken), PARAMS, use_tqdm=False)


def test_profiling_dummies_follow_the_budget_and_limits(engine):
    from mmcore.engine.profiling import _dummy_encoder_inputs

    inputs = _dummy_encoder_inputs(engine.processor, 100, {"image": 0, "video": 1})
    assert set(inputs) == {"video"}
    (video,) = inputs["video"]
    assert 0 < video["video_grid_thw"].prod().item() // 4 <= 100


def test_processed_images_in_either_layout_are_taken(engine):
    from mmcore.models.qwen2_vl.processor import expand_image_patches

    image = Image.fromarray(_frames(1, 40, 56)[0])
    raw = engine.generate(_image(image), PARAMS, use_tqdm=False)[0]
    data = engine.inputs.process(_image(image)).items[0].data
    tower = engine.model.visual
    hf_layout = expand_image_patches(data["pixel_values"], tower.temporal, tower.patch_dim)
    for pixels in (data["pixel_values"], hf_layout):
        given = {"pixel_values": pixels, "image_grid_thw": data["image_grid_thw"]}
        out = engine.generate(_image(given), PARAMS, use_tqdm=False)[0]
        assert out.outputs[0].token_ids == raw.outputs[0].token_ids
    with pytest.raises(ValueError, match="pixel_values must be"):
        engine.generate(_image({**data, "pixel_values": hf_layout[:, :7]}), PARAMS, use_tqdm=False)
