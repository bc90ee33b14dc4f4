"""A large generate() batch starts running while its later prompts are still being processed."""

from __future__ import annotations

import threading

import pytest

from mmcore import Engine, SamplingParams
from mmcore.engine import engine as engine_module

GREEDY = SamplingParams(temperature=0.0, max_tokens=4)
VALID = "USER: <image>\nWhat is this?\nASSISTANT:"
NAMES = ["astronaut", "chelsea", "coffee"]
HELD_BACK = 10  # prompts from this index on are processed only once the engine has stepped


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    return Engine(tiny_llava_dir, max_model_len=512)


def _prompts(photos, count):
    return [
        {"prompt": VALID, "multi_modal_data": {"image": photos[NAMES[i % 3]]}} for i in range(count)
    ]


@pytest.fixture
def held_back_processing(engine, monkeypatch):
    """Processing of prompt HELD_BACK and later of a tracked batch waits (up to 20 s) for the
    engine's first step after ``track``; ``ran_after_a_step`` says, per held-back prompt, whether
    a step had run before it was processed."""
    stepped = threading.Event()
    ran_after_a_step: list[bool] = []
    index_of = {}
    process, step = engine.inputs.process, engine.step

    def gated_process(prompt):
        if index_of.get(id(prompt), 0) >= HELD_BACK:
            ran_after_a_step.append(stepped.wait(timeout=20))
        return process(prompt)

    def noted_step():
        outputs = step()
        stepped.set()
        return outputs

    monkeypatch.setattr(engine.inputs, "process", gated_process)
    monkeypatch.setattr(engine, "step", noted_step)

    def track(prompts):  # the batch whose prompts are held back; steps before it do not count
        index_of.update({id(p): i for i, p in enumerate(prompts)})
        stepped.clear()
        return prompts

    return track, ran_after_a_step


def test_a_large_batch_runs_while_later_prompts_are_processed(engine, photos, held_back_processing):
    assert engine_module._PARALLEL_INPUT_MIN <= 20
    singles = {
        n: engine.generate(p, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
        for n, p in zip(NAMES, _prompts(photos, 3))
    }
    track, ran_after_a_step = held_back_processing
    batch = engine.generate(track(_prompts(photos, 20)), GREEDY, use_tqdm=False)
    assert ran_after_a_step == [True] * 10  # no held-back prompt waited for the whole batch
    for i, out in enumerate(batch):
        assert out.outputs[0].token_ids == singles[NAMES[i % 3]], i
    assert not engine.has_unfinished_requests()
    assert engine.stats()["kv_blocks_used"] == 0


def test_a_bad_prompt_found_mid_run_aborts_the_batch_and_frees_its_blocks(
    engine, photos, held_back_processing
):
    track, ran_after_a_step = held_back_processing
    prompts = _prompts(photos, 20)
    prompts[15] = {"prompt": VALID, "multi_modal_data": {"image": b"garbage"}}
    with pytest.raises(ValueError, match="image"):
        engine.generate(track(prompts), GREEDY, use_tqdm=False)
    assert any(ran_after_a_step)  # the engine had run part of the batch before the error
    assert not engine.has_unfinished_requests()
    assert engine._in_flight is None
    assert engine.stats()["kv_blocks_used"] == 0
    again = engine.generate(_prompts(photos, 17), GREEDY, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in again] == [4] * 17
