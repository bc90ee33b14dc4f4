"""InternVL 3: token-for-token parity with HF transformers' greedy generate().

Images go through HF's image processor (tiling on) on the HF side. HF's video processor needs
torchvision (absent here), so HF's model runs on the frames mmcore's processor made; the
processors are compared on a machine with torchvision (bench/check_internvl_hf_processor.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.multimodal.video import encode_video, load_video
from mmcore.testing.internvl_oracle import hf_greedy, hf_inputs, load_hf_internvl
from mmcore.testing.tiny_internvl import TOKENS_PER_TILE

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
IMG, VID = "<IMG_CONTEXT>\n", "<video>\n"


def _user(body: str) -> str:
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


def _clip(photo, num_frames: int, size=(40, 24)) -> np.ndarray:
    """Frames panning across a photo (T, H, W, 3)."""
    frame = np.asarray(photo.resize((size[0] + 4 * num_frames, size[1])))
    return np.stack([frame[:, 4 * i : 4 * i + size[0]] for i in range(num_frames)])


def _prompts(photos) -> list[tuple[str, list, list]]:
    """12 prompts: text only, 1-2 images of 1 to 7 tiles, videos of 3 and 4 frames, mixed."""
    a, c = photos["astronaut"], photos["chelsea"]
    tall, wide = photos["rocket_tall"], photos["coffee_wide"]
    small = photos["coffee"].resize((20, 20))  # one tile, no thumbnail
    three, four = _clip(a, 3), _clip(photos["coffee"], 4, size=(32, 32))
    return [
        (_user("hello there, how are you?"), [], []),
        (_user(f"{IMG}What is this?"), [a], []),
        (_user(f"{IMG}and {IMG}compare them"), [c, wide], []),
        (_user(f"{VID}What happens?"), [], [four]),
        (_user(f"{IMG}What is this?"), [small], []),
        (_user(f"{IMG}then\n{VID}both"), [tall], [three]),
        (_user(f"{VID}first, then {IMG}"), [a], [four]),
        (_user("tell me a story about a cat on a warm blanket"), [], []),
        (_user(f"{IMG}{IMG}{VID}all"), [a, small], [three]),
        (_user(f"{IMG}Again?"), [a], []),
        (_user(f"{VID}{VID}two clips"), [], [four, three]),
        (_user(f"A long question about the picture, with many words in it: {IMG}"), [tall], []),
    ]


def _engine_prompt(text, images, videos, kwargs=None):
    data = {}
    if images:
        data["image"] = images
    if videos:
        data["video"] = videos
    if not data:
        return text
    prompt = {"prompt": text, "multi_modal_data": data}
    return {**prompt, "mm_processor_kwargs": kwargs} if kwargs else prompt


def _hf_case(model_dir, processor, text, images, videos, image_kwargs=None):
    processed = [processor.process("video", [load_video(v)])[0] for v in videos]
    return hf_inputs(model_dir, text, images, processed, image_kwargs)


@pytest.fixture(scope="module")
def case(tiny_internvl_dir, photos):
    engine = Engine(tiny_internvl_dir, seed=0)
    prompts = _prompts(photos)
    hf = [_hf_case(tiny_internvl_dir, engine.processor, *p) for p in prompts]
    expected = [hf_greedy(tiny_internvl_dir, inputs, MAX_TOKENS) for inputs in hf]
    return tiny_internvl_dir, engine, prompts, hf, expected


def _ids(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def _run(engine, prompts, params=GREEDY):
    return _ids(engine.generate([_engine_prompt(*p) for p in prompts], params, use_tqdm=False))


def test_batched_greedy_matches_hf(case):
    _, engine, prompts, _, expected = case
    assert _run(engine, prompts) == expected
    assert engine.stats()["kv_blocks_used"] == 0


def test_expanded_prompts_equal_hf(case):
    _, engine, prompts, hf, _ = case
    tiles = []
    for prompt, inputs in zip(prompts, hf):
        processed = engine.inputs.process(_engine_prompt(*prompt))
        assert processed.token_ids.tolist() == inputs["input_ids"][0].tolist()
        tiles += [it.data["pixel_values"].shape[0] for it in processed.items]
    assert {1, 3, 4, 5, 7} <= set(tiles)  # one tile, frames and several grids with thumbnails


def test_tiles_and_embeddings_equal_hf(case):
    model_dir, engine, prompts, hf, _ = case
    model, _, _ = load_hf_internvl(model_dir)
    inputs = hf[2]  # two images of different aspect ratios: 6 + 1 tiles each
    processed = engine.inputs.process(_engine_prompt(*prompts[2]))
    # uint8 tiles normalized as the model does it: bit for bit HF's slow image processor
    pixels = torch.cat([engine.model.normalized_pixels(it.data) for it in processed.items])
    assert torch.equal(pixels, inputs["pixel_values"])
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        got = engine.model.encode("image", [it.data for it in processed.items])
    assert [g.shape[0] for g in got] == [7 * TOKENS_PER_TILE, 7 * TOKENS_PER_TILE]
    torch.testing.assert_close(torch.cat(got), ref.flatten(0, 1), rtol=1e-4, atol=1e-5)


def test_per_request_tiling_settings_match_hf(case, photos):
    model_dir, engine, _, _, _ = case
    text, images = _user(f"{IMG}What is this?"), [photos["chelsea"]]
    inputs = _hf_case(model_dir, engine.processor, text, images, [], {"max_patches": 2})
    expected = hf_greedy(model_dir, inputs, MAX_TOKENS)
    kwargs = {"max_dynamic_patch": 2}
    out = engine.generate([_engine_prompt(text, images, [], kwargs)], GREEDY, use_tqdm=False)
    assert out[0].prompt_token_ids == inputs["input_ids"][0].tolist()
    assert out[0].outputs[0].token_ids == expected
    # no thumbnail: HF's tiles without the last one
    prompt = _engine_prompt(text, images, [], {"max_dynamic_patch": 2, "use_thumbnail": False})
    item = engine.inputs.process(prompt).items[0]
    assert torch.equal(engine.model.normalized_pixels(item.data), inputs["pixel_values"][:-1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_dynamic_patch": 0}, "max_dynamic_patch"),
        ({"min_dynamic_patch": 3, "max_dynamic_patch": 2}, "min_dynamic_patch"),
        ({"use_thumbnail": "yes"}, "use_thumbnail"),
        ({"max_tiles": 4}, "not known"),
        ({"num_frames": 9}, "num_frames"),
        ({"num_frames": 2, "max_frames": "x"}, "max_frames"),
    ],
)
def test_bad_settings_are_refused(case, photos, kwargs, message):
    _, engine, _, _, _ = case
    clip = _clip(photos["astronaut"], 4)
    prompt = _engine_prompt(_user(f"{IMG}{VID}x"), [photos["astronaut"]], [clip], kwargs)
    with pytest.raises(ValueError, match=message):
        engine.generate([prompt], GREEDY, use_tqdm=False)
    assert engine.stats()["kv_blocks_used"] == 0


def test_num_frames_picks_frames_as_hf(case, photos):
    _, engine, _, _, _ = case
    frames = np.stack([np.full((8, 8, 3), 10 * i, dtype=np.uint8) for i in range(8)])
    clip = engine.processor.load_media(
        "video", frames, engine.inputs.media_options, {"num_frames": 3}
    )
    # HF: arange(total / n / 2, total, total / n).int() -> frames 1, 4, 6
    assert [int(f[0, 0, 0]) // 10 for f in clip.frames] == [1, 4, 6]
    encoded = encode_video(np.repeat(frames, 4, axis=1).repeat(4, axis=2), fps=4)
    options = engine.inputs.media_options
    decoded = engine.processor.load_media("video", encoded, options, {"num_frames": 3})
    assert decoded.num_frames == 3 and decoded.fps == pytest.approx(4 * 3 / 8)
    with pytest.raises(ValueError, match="mutually exclusive"):
        engine.processor.load_media("video", encoded, options, {"num_frames": 3, "fps": 2})
    prompt = _engine_prompt(_user(f"{VID}x"), [], [frames], {"num_frames": 3})
    processed = engine.inputs.process(prompt)
    assert processed.items[0].data["pixel_values"].shape[0] == 3
    assert processed.token_ids.tolist().count(engine.processor.token_ids["start_image_token"]) == 3


def test_dummy_items_have_the_most_embeddings(case):
    _, engine, _, _, _ = case
    processor = engine.processor
    image = processor.dummy_items("image", 1)[0]
    assert processor.num_embeds("image", image) == 7 * TOKENS_PER_TILE  # 6 tiles + thumbnail
    clip = processor.dummy_items("video", 1, max_embeds=100)[0]
    assert processor.num_embeds("video", clip) <= 100


def test_prefix_cache_hits_keep_parity(case):
    model_dir, _, prompts, _, expected = case
    engine = Engine(model_dir, enable_prefix_caching=True, block_size=8)
    first = _run(engine, prompts)
    hits_before = engine.stats()["prefix_hits"]
    second = _run(engine, prompts)
    assert engine.stats()["prefix_hits"] > hits_before
    assert first == expected and second == expected


def test_chunked_prefill_inside_images_keeps_parity(case):
    model_dir, _, prompts, _, expected = case
    chosen = [2, 5, 8]  # 20-token chunks cut through 16-token tiles, images and frames
    engine = Engine(model_dir, max_num_batched_tokens=20, enable_prefix_caching=False)
    assert _run(engine, [prompts[i] for i in chosen]) == [expected[i] for i in chosen]


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


def test_chat_with_image_and_video_parts_matches_hf(case):
    _, engine, prompts, hf, expected = case
    _, images, videos = prompts[5]  # image then video
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": images[0]},
                {"type": "text", "text": "then\n"},
                {"type": "video", "video": videos[0]},
                {"type": "text", "text": "both"},
            ],
        }
    ]
    out = engine.chat(messages, GREEDY, use_tqdm=False)
    assert out[0].prompt_token_ids == hf[5]["input_ids"][0].tolist()
    assert out[0].outputs[0].token_ids == expected[5]


@pytest.mark.parametrize("feature_layer", [-1, -2])
def test_internvit_300m_layout_embeddings_equal_hf(tmp_path, photos, feature_layer):
    """InternVL3-8B's tower layout: LayerNorm, no QK-norm, mean pooling (no final norm); and
    earlier feature layers (hidden_states[i], the embeddings for 0)."""
    from mmcore.testing.tiny_internvl import build_tiny_internvl

    model_dir = build_tiny_internvl(
        tmp_path,
        seed=3,
        feature_layer=feature_layer,
        use_qk_norm=False,
        norm_type="layer_norm",
        use_mean_pooling=True,
        attention_bias=False,
    )
    engine = Engine(model_dir, seed=0)
    text, images = _user(f"{IMG}and {IMG}what?"), [photos["astronaut"], photos["coffee_wide"]]
    inputs = hf_inputs(model_dir, text, images, [])
    model, _, _ = load_hf_internvl(model_dir)
    processed = engine.inputs.process(_engine_prompt(text, images, []))
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        got = engine.model.encode("image", [it.data for it in processed.items])
    torch.testing.assert_close(torch.cat(got), ref.flatten(0, 1), rtol=1e-4, atol=1e-5)
    out = engine.generate([_engine_prompt(text, images, [])], GREEDY, use_tqdm=False)
    assert out[0].outputs[0].token_ids == hf_greedy(model_dir, inputs, MAX_TOKENS)


def test_processed_pixels_and_embeddings_keep_hf_layout(case):
    _, engine, prompts, hf, expected = case
    text, images, _ = prompts[1]
    item = engine.inputs.process(_engine_prompt(*prompts[1])).items[0].data
    pixels = hf[1]["pixel_values"]  # HF's normalized float tiles
    with torch.no_grad():
        embeds = engine.model.encode("image", [{"pixel_values": pixels}])[0]
    for given in ({"pixel_values": pixels}, dict(item), {"image_embeds": embeds}):
        prompt = {"prompt": text, "multi_modal_data": {"image": [given]}}
        out = engine.generate([prompt], GREEDY, use_tqdm=False)[0]
        assert out.prompt_token_ids == hf[1]["input_ids"][0].tolist()
        assert out.outputs[0].token_ids == expected[1]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"text_config": {"model_type": "llama"}}, "language model is not supported"),
        ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy"),
        ({"vision_feature_layer": [-1, -2]}, "one vision_feature_layer"),
        ({"vision_feature_layer": 9}, "out of range"),
        ({"vision_config": {"norm_type": "batch_norm"}}, "norm_type"),
    ],
)
def test_unsupported_configs_are_refused(change, message):
    from transformers import InternVLConfig

    from mmcore.models.internvl import InternVLModel
    from mmcore.testing.tiny_internvl import tiny_internvl_config

    ids = {"<IMG_CONTEXT>": 5, "eos": 1, "pad": 0}
    fields = tiny_internvl_config(300, ids).to_dict()
    for key, value in change.items():
        fields[key] = {**fields[key], **value} if isinstance(value, dict) else value
    config = InternVLConfig(**fields)
    with pytest.raises(ValueError, match=message):
        InternVLModel(config, dtype=torch.float32, device="meta")


def test_both_checkpoint_key_layouts_load_the_same_weights(tiny_internvl_dir):
    """transformers 5 saves ``vision_tower.*`` / ``language_model.model.*``; its in-memory
    (and some published) layout is ``model.vision_tower.*`` / ``model.language_model.*``."""
    from safetensors.torch import load_file

    from mmcore.models.internvl import InternVLModel
    from mmcore.models.internvl.model import canonical_weight_name

    saved = load_file(f"{tiny_internvl_dir}/model.safetensors")
    renamed = {}
    for name, tensor in saved.items():
        for old, new in (("language_model.model.", "model.language_model."),
                         ("language_model.lm_head.", "lm_head."), ("", "model.")):  # fmt: skip
            if name.startswith(old):
                renamed[new + name[len(old) :]] = tensor
                break
    assert all(canonical_weight_name(k) in saved for k in renamed)
    config = load_hf_internvl(tiny_internvl_dir)[0].config
    models = [InternVLModel(config, dtype=torch.float32, device="cpu") for _ in range(2)]
    models[0].load_weights(saved.items())
    models[1].load_weights(renamed.items())
    for (name, a), (_, b) in zip(models[0].state_dict().items(), models[1].state_dict().items()):
        assert torch.equal(a, b), name
