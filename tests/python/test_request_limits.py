"""Out-of-range numbers and malformed parts are ValueErrors naming the field, at every layer
(SamplingParams, the engine's model checks, the pybind11 boundary); the engine keeps serving."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmcore import Engine, SamplingParams, _core

GREEDY = SamplingParams(temperature=0.0, max_tokens=3)


@pytest.fixture(scope="module")
def engine(tiny_llava_dir):
    return Engine(tiny_llava_dir, seed=0)


def _still_serves(engine: Engine) -> None:
    out = engine.generate("hello", GREEDY, use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 3
    assert engine.stats()["kv_blocks_used"] == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"stop_token_ids": [2**40]}, "stop_token_ids"),
        ({"stop_token_ids": [10**6]}, "stop_token_ids"),
        ({"min_tokens": 2**40, "max_tokens": None}, "min_tokens"),
        ({"top_k": 2**70, "temperature": 1.0}, "top_k"),
        ({"top_k": 10**6, "temperature": 1.0}, "top_k"),
        ({"logprobs": 10**6}, "logprobs"),
        ({"max_tokens": 2**40}, "max_tokens"),
    ],
)
def test_values_the_model_cannot_serve_are_refused(engine, kwargs, field):
    with pytest.raises(ValueError, match=field):
        engine.generate("hello", SamplingParams(**kwargs), use_tqdm=False)
    _still_serves(engine)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"top_p": math.nan}, "top_p"),
        ({"min_p": math.nan}, "min_p"),
        ({"top_k": 2.5}, "top_k"),
        ({"seed": "7"}, "seed"),
        ({"max_tokens": 3.0}, "max_tokens"),
    ],
)
def test_sampling_params_refuse_non_finite_and_wrong_types(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(
    "token_ids", [[1, 2**40, 5], [1, 2**70], [1.5, 2], [[1, 2]], [-1], [1, "a"]]
)
def test_bad_prompt_token_ids_are_refused(engine, token_ids):
    with pytest.raises(ValueError, match="prompt"):
        engine.generate({"prompt_token_ids": token_ids}, GREEDY, use_tqdm=False)
    _still_serves(engine)


@pytest.mark.parametrize(
    "part",
    [
        {"type": ["image_url"]},
        {"type": None},
        {"type": "image_embeds"},
        {"type": "image_url"},
        {"type": "text"},
        {"type": "video_url", "video_url": "x"},
    ],
)
def test_malformed_chat_parts_are_refused(engine, part):
    with pytest.raises(ValueError):
        engine.chat([{"role": "user", "content": [part]}], GREEDY, use_tqdm=False)
    _still_serves(engine)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 2**40}, "max_tokens"),
        ({"min_tokens": 2**40}, "min_tokens"),
        ({"stop_token_ids": [2**40]}, "stop_token_ids"),
        ({"eos_token_ids": [2**70]}, "eos_token_ids"),
        ({"priority": "high"}, "priority"),
        ({"token_ids": np.array([1, 2**40])}, "token_ids"),
        ({"token_ids": [[1, 2]]}, "token_ids"),
    ],
)
def test_pybind_boundary_raises_value_error_naming_the_field(kwargs, field):
    cfg = _core.SchedulerConfig()
    cfg.num_blocks, cfg.block_size, cfg.max_model_len = 16, 4, 32
    scheduler = _core.Scheduler(cfg)
    args = {"token_ids": np.array([1, 2, 3], dtype=np.int32), "features": [], "max_tokens": 4}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        scheduler.add_request(0, **args)
    assert not scheduler.has_unfinished_requests()
    scheduler.add_request(1, np.array([1, 2, 3], dtype=np.int32), [], max_tokens=2)
    assert scheduler.has_unfinished_requests()
