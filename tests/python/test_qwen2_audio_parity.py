"""Qwen2-Audio: mmcore's greedy tokens equal HF generate() on a tiny random checkpoint, with
real (synthesised) speech of different lengths and sampling rates, 0-2 clips per prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.testing import speech
from mmcore.testing.tiny_audio_checkpoints import build_tiny_qwen2_audio

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
CLIP = "Audio {n}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"


def _turn(text: str, num_clips: int) -> str:
    clips = "".join(CLIP.format(n=i + 1) for i in range(num_clips))
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{clips}{text}<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.fixture(scope="module")
def qwen2_audio_dir(tmp_path_factory):
    return build_tiny_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio"), seed=0)


def speech_clips():
    """(waveform, sampling rate) pairs: speech at 16 / 22.05 / 8 kHz, noise, a tone."""
    rng = np.random.default_rng(1)
    return [
        (speech.synthesize_speech("Hello world, this is a test.", 16000), 16000),
        (speech.synthesize_speech("The rain in Spain stays mainly in the plain.", 22050), 22050),
        (speech.synthesize_speech("Seven.", 8000), 8000),
        ((0.05 * rng.standard_normal(16000 * 4)).astype(np.float32), 16000),
        ((0.3 * np.sin(np.arange(44100 * 2) * 0.06)).astype(np.float32), 44100),
    ]


@pytest.fixture(scope="module")
def clips():
    return speech_clips()


def _prompts(clips):
    a, b, c, noise, tone = clips
    return [
        (_turn("Say something nice.", 0), []),
        (_turn("What is said?", 1), [a]),
        (_turn("Transcribe it.", 1), [b]),
        (_turn("Which is longer?", 2), [a, c]),
        (_turn("Describe the sound.", 1), [noise]),
        (_turn("Is this music?", 1), [tone]),
        (_turn("Compare the two clips, please.", 2), [b, noise]),
        (_turn("Count the words.", 1), [c]),
        (_turn("Tell me a joke about dogs.", 0), []),
    ]


@torch.inference_mode()
def _hf_greedy(model_dir, prompt, clips):
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from mmcore.multimodal.media import load_audio

    model = _hf_model(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    audio = [load_audio(c, 16000) for c in clips] or None
    inputs = processor(text=prompt, audio=audio, sampling_rate=16000, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    assert isinstance(model, Qwen2AudioForConditionalGeneration)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


_HF_MODELS = {}


def _hf_model(model_dir):
    from transformers import Qwen2AudioForConditionalGeneration

    if model_dir not in _HF_MODELS:
        _HF_MODELS[model_dir] = Qwen2AudioForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32
        ).eval()
    return _HF_MODELS[model_dir]


@pytest.fixture(scope="module")
def case(qwen2_audio_dir, clips):
    prompts = _prompts(clips)
    expected = [_hf_greedy(qwen2_audio_dir, p, c) for p, c in prompts]
    return qwen2_audio_dir, prompts, expected


def _engine_prompts(prompts):
    return [{"prompt": p, "multi_modal_data": {"audio": c}} if c else p for p, c in prompts]


def _tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_batched_greedy_matches_hf(case):
    model_dir, prompts, expected = case
    engine = Engine(model_dir)
    assert _tokens(engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)) == expected
    assert engine.stats()["kv_blocks_used"] == 0


def test_prefix_caching_chunking_inside_audio_and_async_keep_parity(case):
    model_dir, prompts, expected = case
    engine = Engine(model_dir, enable_prefix_caching=True, max_num_batched_tokens=16)
    first = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    hits = engine.stats()["prefix_hits"]
    second = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    assert engine.stats()["prefix_hits"] > hits
    assert _tokens(first) == expected and _tokens(second) == expected
    overlapped = Engine(model_dir, async_scheduling=True, enable_prefix_caching=False)
    out = overlapped.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    assert _tokens(out) == expected


def test_preemption_keeps_parity(case):
    model_dir, prompts, expected = case
    probe = Engine(model_dir)
    longest = max(
        len(o.prompt_token_ids)
        for o in probe.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    )
    block_bytes = kv_bytes_per_block(probe.model, 16, probe.config.dtype)
    blocks = -(-(longest + MAX_TOKENS) // 16) + 2
    engine = Engine(
        model_dir,
        kv_cache_memory_bytes=blocks * block_bytes,
        max_num_batched_tokens=64,
        enable_prefix_caching=False,
    )
    outputs = engine.generate(_engine_prompts(prompts), GREEDY, use_tqdm=False)
    assert engine.stats()["num_preemptions"] > 0
    assert _tokens(outputs) == expected


def test_chat_with_input_audio_part_matches_hf(case, clips):
    import base64

    model_dir, _, _ = case
    wav = speech.encode(clips[0][0], 16000, "wav")
    part = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"},
    }
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "What is said?"}]}]
    engine = Engine(model_dir)
    out = engine.chat(messages, GREEDY, use_tqdm=False)
    expected = _hf_greedy(model_dir, _turn("What is said?", 1), [clips[0]])
    assert out[0].outputs[0].token_ids == expected


def test_audio_errors_name_the_problem(case):
    model_dir, _, _ = case
    engine = Engine(model_dir)
    too_long = np.zeros(16000 * 31, np.float32)
    with pytest.raises(ValueError, match="at most 30 s"):
        engine.generate(
            {"prompt": _turn("x", 1), "multi_modal_data": {"audio": too_long}},
            GREEDY,
            use_tqdm=False,
        )
    with pytest.raises(ValueError, match="does not accept image"):
        engine.generate(
            {"prompt": _turn("x", 0), "multi_modal_data": {"image": too_long}},
            GREEDY,
            use_tqdm=False,
        )
    with pytest.raises(ValueError, match="not a readable audio file"):
        engine.generate(
            {"prompt": _turn("x", 1), "multi_modal_data": {"audio": b"nope" * 20}},
            GREEDY,
            use_tqdm=False,
        )
    good = engine.generate(_turn("still serving?", 0), GREEDY, use_tqdm=False)
    assert len(good[0].outputs[0].token_ids) > 0
    assert engine.stats()["kv_blocks_used"] == 0


def test_quantize_vision_quantises_the_audio_tower_and_projector(case):
    model_dir, prompts, _ = case
    engine = Engine(model_dir, quantization="fp8", quantize_vision=True)
    model = engine.model
    for layer in (model.audio_tower.layers[0].fc1, model.multi_modal_projector.linear):
        assert layer.weight.dtype == torch.float8_e4m3fn
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    out = engine.generate(_engine_prompts(prompts[1:2]), params, use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == MAX_TOKENS


def test_checkpoint_with_the_lm_saved_whole_under_model_loads(case, tmp_path):
    """transformers 5.17 saves the LM whole: ``language_model.model.model.*`` / ``.model.lm_head``."""
    import shutil

    from safetensors.torch import load_file, save_file

    model_dir, prompts, expected = case
    moved = tmp_path / "moved"
    shutil.copytree(model_dir, moved)
    (path,) = [p for p in moved.iterdir() if p.suffix == ".safetensors"]
    tensors = load_file(path)
    renamed = {}
    for name, tensor in tensors.items():
        if name.startswith("language_model."):
            name = "language_model.model." + name[len("language_model.") :]
        renamed[name] = tensor
    assert any(n.startswith("language_model.model.model.layers.") for n in renamed)
    save_file(renamed, path, metadata={"format": "pt"})
    engine = Engine(str(moved))
    assert _tokens(engine.generate(_engine_prompts(prompts[:3]), GREEDY)) == expected[:3]
