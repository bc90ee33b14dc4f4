"""InternVL with tensor parallelism on CPU: 2 worker processes over gloo.

InternViT is sharded by heads (its QK-norm spans all heads: the sum of squares is all-reduced),
the projector and the Qwen2 LM like Llama's. Greedy tokens of images, a video and text, with
chunks cutting through tiles, prefix caching and async scheduling, equal HF's and TP=1's.
"""

from __future__ import annotations

import pytest
from test_internvl_parity import GREEDY, MAX_TOKENS, _engine_prompt, _hf_case, _prompts

from mmcore import Engine
from mmcore.testing.internvl_oracle import hf_greedy

CHOSEN = [0, 1, 2, 5, 9]  # text, images of 5 and 7 + 7 tiles, image + video, a repeat


@pytest.fixture(scope="module")
def tp_engine(tiny_internvl_dir):
    options = dict(max_num_batched_tokens=40, enable_prefix_caching=True, async_scheduling=True)
    engine = Engine(tiny_internvl_dir, tensor_parallel_size=2, **options)
    yield engine, options
    engine.shutdown()


def test_tp2_greedy_matches_hf_and_tp1(tp_engine, tiny_internvl_dir, photos):
    engine, options = tp_engine
    single = Engine(tiny_internvl_dir, **options)
    prompts = [_prompts(photos)[i] for i in CHOSEN]
    expected = [
        hf_greedy(tiny_internvl_dir, _hf_case(tiny_internvl_dir, single.processor, *p), MAX_TOKENS)
        for p in prompts
    ]
    requests = [_engine_prompt(*p) for p in prompts]
    outputs = engine.generate(requests, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert engine.stats()["prefix_hits"] > 0  # the repeated image
    assert engine.stats()["kv_blocks_used"] == 0
    outputs = single.generate(requests, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
