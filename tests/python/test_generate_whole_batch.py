"""generate() processes a whole batch, in the caller's thread, before any of it runs."""

from __future__ import annotations

import threading

import pytest

from mmcore import Engine, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=4)
VALID = "USER: <image>\nWhat is this?\nASSISTANT:"
NAMES = ["astronaut", "chelsea", "coffee"]


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    return Engine(tiny_llava_dir, max_model_len=512)


def _prompts(photos, count):
    return [
        {"prompt": VALID, "multi_modal_data": {"image": photos[NAMES[i % 3]]}} for i in range(count)
    ]


@pytest.fixture
def recorded(engine, monkeypatch):
    """Records, in call order, ("process", thread name) and ("step", None) events."""
    events: list[tuple[str, str | None]] = []
    lock = threading.Lock()
    process, step = engine.inputs.process, engine.step

    def noted_process(prompt):
        result = process(prompt)  # a bad prompt raises before it counts as processed
        with lock:
            events.append(("process", threading.current_thread().name))
        return result

    def noted_step():
        with lock:
            events.append(("step", None))
        return step()

    monkeypatch.setattr(engine.inputs, "process", noted_process)
    monkeypatch.setattr(engine, "step", noted_step)
    return events


def test_a_large_batch_is_processed_whole_before_it_runs(engine, photos, recorded):
    singles = {
        n: engine.generate(p, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
        for n, p in zip(NAMES, _prompts(photos, 3))
    }
    recorded.clear()
    batch = engine.generate(_prompts(photos, 20), GREEDY, use_tqdm=False)
    kinds = [kind for kind, _ in recorded]
    assert kinds[:20] == ["process"] * 20 and "process" not in kinds[20:]  # no step in between
    assert {thread for _, thread in recorded[:20]} == {threading.current_thread().name}
    for i, out in enumerate(batch):  # outputs in input order
        assert out.outputs[0].token_ids == singles[NAMES[i % 3]], i
    assert not engine.has_unfinished_requests()
    assert engine.stats()["kv_blocks_used"] == 0


def test_a_bad_prompt_in_a_large_batch_runs_nothing(engine, photos, recorded):
    prompts = _prompts(photos, 20)
    prompts[15] = {"prompt": VALID, "multi_modal_data": {"image": b"garbage"}}
    with pytest.raises(ValueError, match="image"):
        engine.generate(prompts, GREEDY, use_tqdm=False)
    assert ("step", None) not in recorded
    assert not engine.has_unfinished_requests()
    assert engine.stats()["kv_blocks_used"] == 0
    again = engine.generate(_prompts(photos, 17), GREEDY, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in again] == [4] * 17
