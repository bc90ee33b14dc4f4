"""Gemma 3 with the hybrid KV cache: the sliding-window layers' blocks that no query can see any
more go back to the pool while the request runs, and the tokens stay HF's.

The tiny checkpoint has 3 sliding layers (window 8) and 1 global layer: 4 KV cache groups of
one layer each. With 4-token blocks a ~200-token prompt spans ~50 blocks, the window 2-3; the
prompts are prefilled in many small chunks and decode 24 tokens past the window. The core's
invariants are checked after every step.
"""

from __future__ import annotations

import pytest
import torch

from mmcore import Engine, SamplingParams
from mmcore.testing.gemma3_oracle import hf_greedy, hf_inputs

MAX_TOKENS = 24
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
IMG = "<start_of_image>"
SMALL_KV = 8 << 20
STORY = (
    "The rocket lifts off into a clear blue sky, leaving a trail of smoke. "
    "The cat sleeps on a warm blanket while the coffee cools on the table. "
    "A photo of an astronaut standing next to a flag on the moon. "
)
OPTIONS = dict(block_size=4, max_num_batched_tokens=32, seed=0)


def _user(body: str) -> str:
    return f"<bos><start_of_turn>user\n{body}<end_of_turn>\n<start_of_turn>model\n"


def _prompts(photos) -> list[tuple[str, list]]:
    return [
        (_user(STORY * 3 + "What happens next?"), []),
        (_user(STORY * 2 + f"{IMG} Describe it, then go on. " + STORY), [photos["astronaut"]]),
        (_user("Numbers 0 1 2 3 4 5 6 7 8 9 " * 6 + STORY), []),
    ]


def _engine_prompt(text: str, images: list):
    return {"prompt": text, "multi_modal_data": {"image": images}} if images else text


class CheckedScheduler:
    """Wraps the engine's scheduler: checks the core's invariants after every step and records
    the most KV blocks in use."""

    def __init__(self, scheduler):
        self._scheduler = scheduler
        self.peak_blocks = 0
        self.steps = 0

    def schedule(self):
        out = self._scheduler.schedule()
        self._scheduler.check_invariants()
        self.steps += 1
        self.peak_blocks = max(self.peak_blocks, self._scheduler.stats()["kv_blocks_used"])
        return out

    def update_from_output(self, *args):
        result = self._scheduler.update_from_output(*args)
        self._scheduler.check_invariants()
        return result

    def __getattr__(self, name):
        return getattr(self._scheduler, name)


def _checked(engine: Engine) -> CheckedScheduler:
    engine.scheduler = CheckedScheduler(engine.scheduler)
    return engine.scheduler


def _run(engine: Engine, prompts) -> list[list[int]]:
    outputs = engine.generate([_engine_prompt(*p) for p in prompts], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outputs]


@pytest.fixture(scope="module")
def case(tiny_gemma3_dir, photos):
    prompts = _prompts(photos)
    expected = [
        hf_greedy(tiny_gemma3_dir, hf_inputs(tiny_gemma3_dir, text, images), MAX_TOKENS)
        for text, images in prompts
    ]
    return tiny_gemma3_dir, prompts, expected


def test_long_prompts_free_sliding_blocks_and_match_hf_with_prefix_caching(case):
    model_dir, prompts, expected = case
    engine = Engine(model_dir, kv_cache_memory_bytes=SMALL_KV, **OPTIONS)
    assert engine.config.scheduler_config.kv_group_windows == [-1, 8, 8, 8]
    prompt_len = len(engine.inputs.process(_engine_prompt(*prompts[0])).token_ids)
    assert prompt_len > 150  # ~40 blocks: far past the window of 2-3 blocks
    checked = _checked(engine)
    assert _run(engine, prompts) == expected
    stats = engine.stats()
    assert checked.steps > 3 * prompt_len // 32  # many prefill chunks
    assert stats["num_kv_groups"] == 4
    assert stats["num_sliding_blocks_freed"] > 3 * (prompt_len // 4 - 4)
    assert stats["kv_blocks_used"] == 0
    hits = stats["prefix_hits"]
    assert _run(engine, prompts) == expected  # the same prompts again: prefix-cache hits
    assert engine.stats()["prefix_hits"] > hits + 100
    assert engine.stats()["kv_blocks_used"] == 0


def test_freeing_takes_far_less_kv_memory_than_keeping_every_block(case):
    model_dir, prompts, expected = case
    peaks = {}
    for keep_all in (False, True):
        engine = Engine(
            model_dir,
            kv_cache_memory_bytes=SMALL_KV,
            enable_prefix_caching=False,
            disable_hybrid_kv_cache_manager=keep_all,
            **OPTIONS,
        )
        checked = _checked(engine)
        assert _run(engine, prompts[:1]) == expected[:1]
        peaks[keep_all] = checked.peak_blocks * engine.config.kv_block_bytes
        stats = engine.stats()
        assert stats["num_kv_groups"] == (1 if keep_all else 4)
        assert (stats["num_sliding_blocks_freed"] > 0) is not keep_all
    # One global layer of 4 keeps every block; the 3 sliding layers only their window.
    assert peaks[False] * 3 < peaks[True]


def test_preemption_on_a_small_cache_keeps_parity(case):
    model_dir, prompts, expected = case
    probe = Engine(model_dir, kv_cache_memory_bytes=SMALL_KV, **OPTIONS)
    block_bytes = probe.config.kv_block_bytes
    # One long request holds ~65 + 3 x 10 blocks: three do not fit together.
    small = Engine(model_dir, kv_cache_memory_bytes=150 * block_bytes, **OPTIONS)
    _checked(small)
    assert _run(small, prompts) == expected
    assert small.stats()["num_preemptions"] > 0
    assert small.stats()["kv_blocks_used"] == 0


def test_async_scheduling_keeps_parity(case):
    model_dir, prompts, expected = case
    engine = Engine(model_dir, async_scheduling=True, kv_cache_memory_bytes=SMALL_KV, **OPTIONS)
    _checked(engine)
    assert _run(engine, prompts) == expected
    assert engine.stats()["overlapped_steps"] > 0
    assert engine.stats()["num_sliding_blocks_freed"] > 0
    assert engine.stats()["kv_blocks_used"] == 0


def test_kv_cache_layer_slots_are_shared_across_groups(case):
    model_dir, _, _ = case
    engine = Engine(model_dir, kv_cache_memory_bytes=SMALL_KV, **OPTIONS)
    caches = engine.executor.runner.kv_caches
    # 4 groups of one layer: every layer uses slot 0, i.e. the same tensors.
    assert all(c[0] is caches[0][0] and c[1] is caches[0][1] for c in caches)
    assert caches[0][0].dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "groups", "slots"),
    [("gemma-3-12b-it", [-1] + [1024] * 5, 8), ("gemma-3-27b-it", [-1] + [1024] * 6, 10)],
)
def test_released_gemma3_configs_split_into_equal_groups(name, groups, slots):
    from transformers import Gemma3TextConfig

    from mmcore.engine.kv_groups import kv_cache_groups
    from mmcore.models.gemma3.text import SLIDING, layer_types
    from mmcore.testing.dummy_gemma3 import GEMMA3_CONFIGS

    config = Gemma3TextConfig(**GEMMA3_CONFIGS[name])
    windows = [config.sliding_window if t == SLIDING else -1 for t in layer_types(config)]
    layout = kv_cache_groups(windows, len(windows))
    assert list(layout.windows) == groups
    assert layout.num_slots == slots
    # Every (group, slot) pair is one layer: no two layers write the same blocks of one tensor.
    pairs = set(zip(layout.layer_group, layout.layer_slot))
    assert len(pairs) == len(windows)
    assert all(layout.windows[g] == w for g, w in zip(layout.layer_group, windows))
    assert kv_cache_groups(windows, len(windows), hybrid=False).num_groups == 1
    assert kv_cache_groups([-1] * 4, 4).num_groups == 1  # no sliding layer: one group
