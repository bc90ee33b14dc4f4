"""Images and audio in one prompt: mmcore's own two-encoder test model (CLIP + LLaVA projector,
Qwen2-Audio's tower, one Qwen2 LM; mmcore.testing.tiny_omni) gives HF's greedy tokens, and the
core schedules both encoders' items under one encoder budget."""

from __future__ import annotations

import numpy as np
import pytest

from mmcore import Engine, SamplingParams
from mmcore.multimodal.media import load_audio
from mmcore.testing import speech
from mmcore.testing.tiny_omni import build_tiny_omni, hf_omni_greedy, register_tiny_omni

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"


def _turn(body: str) -> str:
    return f"<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    register_tiny_omni()
    return build_tiny_omni(tmp_path_factory.mktemp("tiny_omni"), seed=0)


@pytest.fixture(scope="module")
def cases(omni_dir, photos):
    rng = np.random.default_rng(2)
    hello = (speech.synthesize_speech("Hello world, this is a test.", 16000), 16000)
    noise = ((0.05 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
    a, c = photos["astronaut"], photos["chelsea"]
    prompts = [
        (_turn(f"<image>\n{AUDIO}\nWhat do you see and hear?"), [a], [hello]),
        (_turn(f"{AUDIO} then <image> and <image>"), [c, a], [noise]),
        (_turn(f"First {AUDIO}, second {AUDIO}, and <image>."), [c], [hello, noise]),
        (_turn("Only text here, please."), [], []),
    ]
    expected = [
        hf_omni_greedy(omni_dir, text, images, [load_audio(x, 16000) for x in clips], MAX_TOKENS)
        for text, images, clips in prompts
    ]
    return prompts, expected


def _engine_prompt(text, images, clips):
    data = {k: v for k, v in (("image", images), ("audio", clips)) if v}
    return {"prompt": text, "multi_modal_data": data} if data else text


def test_image_and_audio_in_one_prompt_match_hf(omni_dir, cases):
    prompts, expected = cases
    engine = Engine(omni_dir, enable_prefix_caching=True)
    for (text, images, clips), (hf_prompt, _) in zip(prompts, expected):
        assert engine.inputs.process(_engine_prompt(text, images, clips)).token_ids.tolist() == (
            hf_prompt
        )
    outputs = engine.generate([_engine_prompt(*p) for p in prompts], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [new for _, new in expected]
    assert engine.stats()["kv_blocks_used"] == 0


def test_both_encoders_share_one_budget_per_step(omni_dir, cases, monkeypatch):
    """A small step budget: chunks cut through the items, and every step's encoder work (both
    modalities together) stays within the one encoder budget; tokens stay HF's."""
    prompts, expected = cases
    engine = Engine(omni_dir, max_num_batched_tokens=40, enable_prefix_caching=False)
    budget = engine.config.scheduler_config.encoder_budget
    per_step: list[dict[str, int]] = []
    encode = engine.model.encode

    def recording(modality, items):
        out = encode(modality, items)
        per_step[-1][modality] = per_step[-1].get(modality, 0) + sum(e.shape[0] for e in out)
        return out

    monkeypatch.setattr(engine.model, "encode", recording)
    step = engine.step

    def counted_step():
        per_step.append({})
        return step()

    monkeypatch.setattr(engine, "step", counted_step)
    outputs = engine.generate([_engine_prompt(*p) for p in prompts], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [new for _, new in expected]
    assert any(len(s) == 2 for s in per_step)  # a step encoded an image and a clip together
    assert all(sum(s.values()) <= budget for s in per_step)
