"""Tensor parallelism for Qwen2-VL / Qwen2.5-VL on CPU (2 gloo workers, executor "mp").

- Qwen2.5-VL, GQA 4/2 (one KV head per rank), vision tower sharded by heads (fused ``qkv``
  rows split per rank), windowed blocks;
- Qwen2-VL with 1 KV head (replicated on both ranks), vision tower data-parallel.
Nine prompts (text, images of different sizes, videos, mixed) with chunks cutting through
images and videos, prefix caching, preemption and async scheduling: greedy tokens equal HF's
(M-RoPE positions travel to the workers with each step).
"""

from __future__ import annotations

import pytest
import torch
from test_qwen2_vl_parity import _engine_prompt, _hf_case, _ids, _prompts

from mmcore import Engine, SamplingParams
from mmcore.engine.runner import kv_bytes_per_block
from mmcore.testing.qwen2_vl_oracle import hf_greedy
from mmcore.testing.tiny_qwen2_vl import build_tiny_qwen2_vl

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
BLOCK_SIZE = 16

CASES = {
    # name: (variant, KV heads, mm_encoder_tp_mode)
    "qwen2_5_vl_kv2_encoder_sharded": ("qwen2_5_vl", 2, "weights"),
    "qwen2_vl_kv1_replicated_encoder_data": ("qwen2_vl", 1, "data"),
}


@pytest.fixture(scope="module", params=list(CASES))
def tp_case(request, tmp_path_factory, photos):
    variant, num_kv_heads, encoder_mode = CASES[request.param]
    model_dir = build_tiny_qwen2_vl(
        tmp_path_factory.mktemp(request.param),
        variant=variant,
        text_overrides={"num_key_value_heads": num_kv_heads},
    )
    single = Engine(model_dir, seed=0)
    prompts = _prompts(photos)[:9]  # text, images of two sizes, videos, mixed
    expected = [
        hf_greedy(model_dir, _hf_case(model_dir, single.processor, *p), MAX_TOKENS) for p in prompts
    ]
    # Each rank holds max(1, KV heads / 2) heads; a cache of 24 blocks makes the newest
    # requests wait or be preempted.
    full_block = kv_bytes_per_block(single.model, BLOCK_SIZE, torch.float32)
    per_rank_block = full_block // num_kv_heads * max(1, num_kv_heads // 2)
    engine = Engine(
        model_dir,
        tensor_parallel_size=2,
        mm_encoder_tp_mode=encoder_mode,
        kv_cache_memory_bytes=24 * per_rank_block,
        max_num_batched_tokens=40,  # chunks cut through images and videos
        enable_prefix_caching=True,
        async_scheduling=True,
        block_size=BLOCK_SIZE,
    )
    yield engine, [_engine_prompt(*p) for p in prompts], expected
    engine.shutdown()


def test_tp2_qwen2_vl_greedy_matches_hf(tp_case):
    engine, prompts, expected = tp_case
    assert engine.config.num_blocks == 24
    assert _ids(engine.generate(prompts, GREEDY, use_tqdm=False)) == expected
    stats = engine.stats()
    assert stats["num_preemptions"] > 0
    assert stats["overlapped_steps"] > 0
    assert stats["kv_blocks_used"] == 0
    hits = stats["prefix_hits"]
    again = engine.generate(prompts[:3], GREEDY, use_tqdm=False)
    assert _ids(again) == expected[:3]
    assert engine.stats()["prefix_hits"] > hits
